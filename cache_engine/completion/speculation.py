"""Drafts for lossless speculative decoding: looked up in the document itself, or recalled from
an earlier completion at the same place (`RecalledDraft`).

Code repeats itself: names, call patterns, whole lines. The next few tokens are drafted from the
most recent earlier place where the last few tokens (prompt or generated) occurred, and the
cache verifies the whole draft in one forward pass (`EditableCache.generate`), keeping the
agreed prefix. The output equals plain greedy decoding; only the number of passes changes.

A verify pass is not free: each drafted token is a row of every product and a query over the
whole context, so eight drafted tokens of which one or two are kept (the usual case away from
repeated lines) cost about what they save (`benchmarks/bench_speculation.py`, default model, 2
CPU threads: a fixed draft of 8 kept 17 % and ran at 0.90x plain decoding). The draft
length therefore follows the acceptance, as transformers' assisted generation does: it grows by
two after a draft kept whole and shrinks by one after a rejection, between 1 and
`draft_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# Keys of the prompt's n-grams: a polynomial hash modulo 2^64. Two n-grams that collide give a
# wrong draft, which verification rejects: a wasted row, never a wrong token.
_HASH_BASE = 0x9E3779B97F4A7C15
_HASH_MASK = 2**64 - 1


def _hash(tokens: Sequence[int]) -> int:
    key = 0
    for token in tokens:
        key = (key * _HASH_BASE + token) & _HASH_MASK
    return key


@dataclass(frozen=True)
class _SortedNgrams:
    """Every n-gram of one size in a run of ids, by key: `ends[i]` is where the n-gram with key
    `keys[i]` ended (the index of the token that followed it), the latest last among equal
    keys."""

    keys: np.ndarray
    ends: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray, size: int) -> _SortedNgrams:
        count = max(len(ids) - size, 0)  # n-grams followed by a token
        keys = np.zeros(count, dtype=np.uint64)
        for offset in range(size if count else 0):
            keys = keys * np.uint64(_HASH_BASE) + ids[offset : offset + count]
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], (order + size).astype(np.int64))

    def latest(self, key: int) -> int | None:
        at = int(np.searchsorted(self.keys, np.uint64(key), side="right")) - 1
        return int(self.ends[at]) if at >= 0 and self.keys[at] == key else None


@dataclass
class PromptLookup:
    """Drafts up to `draft_tokens` tokens after the most recent earlier occurrence of the last
    `max_ngram` tokens, down to `min_ngram` (one shared token is mostly chance); the first
    draft is `first_draft` tokens long, the next ones follow the acceptance (module doc), or
    all are `draft_tokens` long with `adaptive=False`.

    One instance serves one generation, whose ids only grow. The ids of the first call (the
    prompt) are indexed at once in numpy, sorted by key (a dictionary insert per n-gram cost 1.2
    ms for a 1,150-token prompt, a tenth of a 32-token completion on the default model); the
    ids that arrive later go into a dictionary. A lookup costs a dictionary read and a binary
    search whatever the prompt's length.
    """

    draft_tokens: int = 8
    max_ngram: int = 3
    min_ngram: int = 2
    first_draft: int = 2
    adaptive: bool = True
    drafted: int = 0
    accepted: int = 0
    _follows: dict[tuple[int, ...], int] = field(default_factory=dict, repr=False)
    _prompt: dict[int, _SortedNgrams] | None = field(default=None, repr=False)
    _indexed: int = 0
    _length: int | None = field(default=None, repr=False)

    @property
    def draft_length(self) -> int:
        """How many tokens the next draft may have."""
        if not self.adaptive:
            return max(0, self.draft_tokens)
        if self._length is None:
            return max(0, min(self.draft_tokens, self.first_draft))
        return self._length

    def __call__(self, ids: Sequence[int]) -> list[int]:
        length = self.draft_length
        if length <= 0:
            return []
        if self._prompt is None:
            prompt = np.asarray(ids, dtype=np.uint64)
            sizes = range(1, self.max_ngram + 1)
            self._prompt = {size: _SortedNgrams.of(prompt, size) for size in sizes}
            self._indexed = len(ids)
        # Index every later n-gram that ends before the last token, with where it was followed.
        for end in range(max(self._indexed, 1), len(ids)):
            for size in range(1, self.max_ngram + 1):
                if end - size >= 0:
                    self._follows[tuple(ids[end - size : end])] = end
        self._indexed = max(self._indexed, len(ids))
        for size in range(min(self.max_ngram, len(ids)), self.min_ngram - 1, -1):
            tail = ids[len(ids) - size :]
            start = self._follows.get(tuple(tail))
            if start is None:
                start = self._prompt[size].latest(_hash(tail))
            if start is not None and start < len(ids):
                follow = list(ids[start : start + length])
                self.drafted += len(follow)
                return follow
        return []

    def record(self, accepted: int, verified: int) -> None:
        """`accepted` of the `verified` tokens of the last draft that the pass checked were
        kept."""
        self.accepted += accepted
        if not self.adaptive:
            return
        length = self.draft_length
        if verified and accepted >= verified:
            self._length = min(self.draft_tokens, length + 2)
        else:
            self._length = max(1, length - 1)


# A recalled continuation is drafted in growing passes: 8 tokens, then twice as many after each
# one kept whole, up to one verify pass of the compiled CPU step (`kv.llama_step.COMPILED_MAX_ROWS`
# rows: the step's own token and 31 drafted).
RECALL_FIRST_DRAFT = 8
RECALL_DRAFT_TOKENS = 31


@dataclass
class RecalledDraft:
    """Drafts the rest of `recalled`, the ids generated at the same place before
    (`recall.CompletionRecall`), while this generation agrees with them; `lookup` drafts
    the rest of the time. The generation starts after the first `prompt_length` ids.

    A recalled continuation was the model's own output at this place, so it is usually kept
    whole, and each pass spent growing a short draft reads all the weights again. But a
    drafted row is not free where the products are large: on the 0.5B shape a pass of 24 rows
    cost about nine one-token steps (`benchmarks/bench_llamacpp.py`, where random weights
    changed their output after the edit). So the first draft is `first_draft` tokens and each
    one kept whole doubles the next, up to `draft_tokens`: a recall that stops holding wastes
    at most about as many rows as were kept before it. The recall's draft lengths do not follow
    `speculativeTokens`, which sizes the document lookup's.

    `drafted` counts the tokens proposed, before `generate` trims a draft to its limits (as
    `PromptLookup` does); `recalled_tokens` those of them that came from `recalled`.
    """

    recalled: Sequence[int]
    prompt_length: int
    lookup: PromptLookup | None = None
    first_draft: int = RECALL_FIRST_DRAFT
    draft_tokens: int = RECALL_DRAFT_TOKENS
    drafted: int = 0
    accepted: int = 0
    recalled_tokens: int = 0
    _from_lookup: bool = field(default=False, repr=False)
    _length: int | None = field(default=None, repr=False)

    def __call__(self, ids: Sequence[int]) -> list[int]:
        generated = ids[self.prompt_length :]
        done = len(generated)
        if done < len(self.recalled) and list(generated) == list(self.recalled[:done]):
            self._from_lookup = False
            if self._length is None:
                self._length = min(self.first_draft, self.draft_tokens)
            follow = list(self.recalled[done : done + self._length])
            self.drafted += len(follow)
            self.recalled_tokens += len(follow)
            return follow
        self._from_lookup = True
        if self.lookup is None:
            return []
        before = self.lookup.drafted
        follow = self.lookup(ids)
        self.drafted += self.lookup.drafted - before
        return follow

    def record(self, accepted: int, verified: int) -> None:
        self.accepted += accepted
        if self._from_lookup:
            if self.lookup is not None:
                self.lookup.record(accepted, verified)
        elif verified and accepted >= verified and self._length is not None:
            self._length = min(self.draft_tokens, 2 * self._length)
