"""The model's next-token distribution mixed with what followed the same tokens earlier in the
prompt: a cache language model (Kuhn and De Mori 1990; for code, Tu et al. 2014, "On the
localness of software"), interpolated over context lengths as in PPM.

Code repeats itself within a file: a name, a call with its arguments, a line pattern. A small
model often ranks the repeated continuation second or third. For every length n from 2 tokens
up, as long as the last n tokens of the sequence occurred earlier in it, the distribution of the
tokens that followed those occurrences, q_n, is mixed in:

    p ← (1 − λ) p + λ q_n        for n = 2, 3, … while the last n tokens occurred before

so a longer match counts more (it is mixed in later, and so kept whole by fewer later mixes),
and the model keeps (1 − λ)^K of the mass after K matching lengths. Decoding takes the most
likely token of the mixture, so the output is a function of the tokens alone: speculative
verification compares drafts with the mixture's choice the same way it did with the model's.

In a fill-in-the-middle prompt the text before the cursor is not at the prompt's end (psm puts
the text after the cursor there, spm the middle marker). Given where the left part ends, the
sequence searched is the prompt, then the left part's last tokens again, then the generated
ones: its tail is the document's text at the cursor, and every part of the prompt is searched.
A match is never followed by a marker or special token (`never_follow`), which also drops the
left part's own end, followed in the prompt by the next marker.

λ was chosen on next-line exact match over 400 held-out lines that the model's evaluation does
not sample (`python -m cache_engine.model.evaluation` uses seed 0; the choice used seed 1):
the shipped model alone got 3.5 % of them; mixed from n = 2 on, λ = 0.2 got 8.5 %, 0.3 got
8.25 %, and the single longest match mixed at 0.4 got 7.5 %.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np
import torch

from cache_engine.kv.editable_cache import most_likely

DEFAULT_WEIGHT = 0.2
MIN_NGRAM = 2
# Past this length every earlier match is the same one copied, and the search costs more.
MAX_NGRAM = 16


class DocumentNgramMixture:
    """Chooses the next token by the model's logits mixed with the document's n-grams
    (module doc): an `EditableCache.generate` chooser (`NextTokenChooser`).

    `left_end`: where the text before the cursor ends in the prompt (None: at its end, a
    left-to-right prompt). `never_follow`: ids that no match may propose (markers, special
    tokens).

    It keeps no index. The sequences of one generation share its prompt, which is converted to
    an array once (a 1,600-token list takes about 26 µs, a few times a default-model step's
    share of it); a sequence that does not start with it becomes the new prompt. A call with no
    match costs about 27 µs on a 1,500-token prompt (Zen 4), a few hundredths of a default-model
    step."""

    def __init__(
        self,
        weight: float = DEFAULT_WEIGHT,
        max_ngram: int = MAX_NGRAM,
        *,
        left_end: int | None = None,
        never_follow: Collection[int] = (),
    ):
        # At 1 the model's share of a matched place would be nothing: every choice would be a
        # copy with no confidence to gate, and a copy that healing forbids would leave no mass.
        if not 0 <= weight < 1:
            raise ValueError(f"the n-gram weight must be in [0, 1), got {weight!r}")
        if max_ngram < MIN_NGRAM:
            raise ValueError(f"max_ngram must be at least {MIN_NGRAM}, got {max_ngram!r}")
        self.weight = weight
        self.max_ngram = max_ngram
        self.left_end = left_end
        self.never_follow = frozenset(never_follow)
        self._prompt_ids: list[int] = []
        # The prompt, then its left part's last tokens again (module doc), then the generated
        # ids of the last call; the array holds the same ids with room to grow.
        self._tokens: list[int] = []
        self._searched_length = 0
        self._array = np.zeros(0, dtype=np.int64)
        self._copied = 0
        # How many tokens the document's n-grams chose against the model's own choice.
        self.overruled = 0

    def __call__(
        self, logits: torch.Tensor, ids: Sequence[int], allowed: torch.Tensor | None = None
    ) -> tuple[int, float]:
        """(the next token after `ids`, its log-probability under the mixture), given the
        model's logits row [vocab] for that place; of the `allowed` ids only, if given."""
        row = logits.float().cpu().numpy()
        top = float(row.max())
        log_total = top + math.log(float(np.exp(row - top).sum(dtype=np.float64)))
        model_best = most_likely(logits, allowed)
        mixed = self.ngram_mass(ids)
        if not mixed:
            return model_best, float(row[model_best]) - log_total
        model_share = (1 - self.weight) ** len(mixed)
        candidates: dict[int, float] = {}
        for weight, follows in mixed:
            for token, share in follows.items():
                candidates[token] = candidates.get(token, 0.0) + weight * share
        if allowed is not None:
            allowed_set = set(allowed.tolist())
            candidates = {t: m for t, m in candidates.items() if t in allowed_set}
        candidates.setdefault(model_best, 0.0)

        def probability(token: int) -> float:
            return model_share * math.exp(float(row[token]) - log_total) + candidates[token]

        token = max(candidates, key=probability)
        if token != model_best:
            self.overruled += 1
        return token, math.log(probability(token))

    def ngram_mass(self, ids: Sequence[int]) -> list[tuple[float, dict[int, float]]]:
        """[(weight in the final mixture, {next token: share of the earlier occurrences})] for
        each length n = 2, 3, … whose last n tokens (of the text at the cursor, module doc)
        occurred earlier."""
        if self.weight == 0:
            return []
        tokens, sequence = self._sequence(ids if isinstance(ids, list) else list(ids))
        last = len(tokens) - 1
        if last < MIN_NGRAM:
            return []
        # Ends of the earlier occurrences of the last two tokens, in numpy since common pairs
        # occur hundreds of times; the few that remain are narrowed down in Python, where a
        # small array would cost more in numpy's calls than in the work.
        found = np.flatnonzero(
            (sequence[1:last] == sequence[last]) & (sequence[: last - 1] == sequence[last - 1])
        )
        copy_start = len(self._prompt_ids)
        ends = [
            end
            for end in (found + 1).tolist()
            # Inside the copy of the left part's end, a match is one the left part already had.
            if not copy_start <= end < copy_start + self._copied - 1
            and tokens[end + 1] not in self.never_follow
        ]
        levels: list[dict[int, float]] = []
        n = MIN_NGRAM
        while ends:
            counts: dict[int, int] = {}
            for end in ends:
                following = tokens[end + 1]
                counts[following] = counts.get(following, 0) + 1
            levels.append({token: count / len(ends) for token, count in counts.items()})
            if n == self.max_ngram:
                break
            back = n
            n += 1
            wanted = tokens[last - back]
            ends = [end for end in ends if end >= back and tokens[end - back] == wanted]
        # Mixed in from the shortest: the one mixed last keeps λ, each earlier one λ(1 − λ)^k.
        keep = 1.0
        weighted = []
        for follows in reversed(levels):
            weighted.append((self.weight * keep, follows))
            keep *= 1 - self.weight
        return weighted

    def _sequence(self, ids: list[int]) -> tuple[list[int], np.ndarray]:
        """The searched sequence for `ids` (module doc), as a list and as an array.

        Both are kept between calls and changed only where the generated tail differs: the ids
        of one generation share the prompt and grow (or, after a verify pass, lose their
        rejected end), and copying the prompt on every call cost about half of a call."""
        known = len(self._prompt_ids)
        if not known or len(ids) < known or ids[:known] != self._prompt_ids:
            left_end = len(ids) if self.left_end is None else self.left_end
            if not 0 <= left_end <= len(ids):
                raise ValueError(f"left_end {left_end} is outside the prompt of {len(ids)} ids")
            self._prompt_ids = ids[:]
            # Up to max_ngram tokens: a left part shorter than that brings the marker (and in
            # spm the right part's end) before it, whose matches are the prompt's own anyway.
            copy = (
                []
                if left_end == len(ids)
                else self._prompt_ids[max(0, left_end - self.max_ngram) : left_end]
            )
            self._copied = len(copy)
            self._tokens = self._prompt_ids + copy
            self._searched_length = len(self._tokens)
            self._array = np.empty(2 * self._searched_length + 64, dtype=np.int64)
            self._array[: self._searched_length] = self._tokens
            known = len(ids)
        searched = self._searched_length
        tail = len(ids) - known
        kept = min(tail, len(self._tokens) - searched)
        same = 0
        while same < kept and self._tokens[searched + same] == ids[known + same]:
            same += 1
        if same < len(self._tokens) - searched or same < tail:
            del self._tokens[searched + same :]
            new = ids[known + same :]
            self._tokens.extend(new)
            if len(self._tokens) > len(self._array):
                grown = np.empty(2 * len(self._tokens), dtype=np.int64)
                grown[: searched + same] = self._array[: searched + same]
                self._array = grown
            self._array[searched + same : len(self._tokens)] = new
        return self._tokens, self._array[: len(self._tokens)]
