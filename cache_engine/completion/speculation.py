"""Drafts for lossless speculative decoding, looked up in the document itself.

Code repeats itself: names, call patterns, whole lines. The next few tokens are drafted from the
most recent earlier place where the last few tokens (prompt or generated) occurred, and the
cache verifies the whole draft in one forward pass (`EditableCache.generate`), keeping the
agreed prefix. The output equals plain greedy decoding; only the number of passes changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class PromptLookup:
    """Drafts up to `draft_tokens` tokens after the most recent earlier occurrence of the last
    `max_ngram` tokens, down to `min_ngram` (one shared token is mostly chance).

    One instance serves one generation, whose ids only grow: n-grams are indexed once, as the
    ids arrive, so a lookup costs a few dictionary reads whatever the prompt's length.
    """

    draft_tokens: int = 8
    max_ngram: int = 3
    min_ngram: int = 2
    drafted: int = 0
    accepted: int = 0
    _follows: dict[tuple[int, ...], int] = field(default_factory=dict, repr=False)
    _indexed: int = 0

    def __call__(self, ids: Sequence[int]) -> list[int]:
        if self.draft_tokens <= 0:
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
                follow = list(ids[start : start + self.draft_tokens])
                self.drafted += len(follow)
                return follow
        return []

    def record(self, accepted: int) -> None:
        self.accepted += accepted
