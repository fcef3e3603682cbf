"""Drafts for lossless speculative decoding, looked up in the document itself.

Code repeats itself: names, call patterns, whole lines. The next few tokens are drafted from the
most recent earlier place where the last few tokens (prompt or generated) occurred, and the
cache verifies the whole draft in one forward pass (`EditableCache.generate`), keeping the
agreed prefix. The output equals plain greedy decoding; only the number of passes changes.

A verify pass is not free: each drafted token is a row of every product and a query over the
whole context, so eight drafted tokens of which one or two are kept (the usual case away from
repeated lines) cost about what they save (`benchmarks/bench_speculation.py`, default model, 2
CPU threads: a fixed draft of 8 kept 14 % and ran at 0.96-1.01x plain decoding). The draft
length therefore follows the acceptance, as transformers' assisted generation does: it grows by
two after a draft kept whole and shrinks by one after a rejection, between 1 and
`draft_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class PromptLookup:
    """Drafts up to `draft_tokens` tokens after the most recent earlier occurrence of the last
    `max_ngram` tokens, down to `min_ngram` (one shared token is mostly chance); the first
    draft is `first_draft` tokens long, the next ones follow the acceptance (module doc), or
    all are `draft_tokens` long with `adaptive=False`.

    One instance serves one generation, whose ids only grow: n-grams are indexed once, as the
    ids arrive, so a lookup costs a few dictionary reads whatever the prompt's length.
    """

    draft_tokens: int = 8
    max_ngram: int = 3
    min_ngram: int = 2
    first_draft: int = 2
    adaptive: bool = True
    drafted: int = 0
    accepted: int = 0
    _follows: dict[tuple[int, ...], int] = field(default_factory=dict, repr=False)
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
        # Index every n-gram that ends before the last token, with where it was followed.
        for end in range(max(self._indexed, 1), len(ids)):
            for size in range(1, self.max_ngram + 1):
                if end - size >= 0:
                    self._follows[tuple(ids[end - size : end])] = end
        self._indexed = len(ids)
        for size in range(min(self.max_ngram, len(ids)), self.min_ngram - 1, -1):
            start = self._follows.get(tuple(ids[len(ids) - size :]))
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
