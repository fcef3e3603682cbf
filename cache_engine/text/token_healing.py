"""Token healing: back the prompt up over its last token and let the model re-create it.

A prompt that ends at the cursor ends with a token training rarely saw in that place. The
indentation of a new line is one whitespace token at the end of the prompt, while inside code
that indentation is split so that its last space starts the next word (" return"); a partial
word is a short token where training saw the whole word as one. The model then continues from a
boundary it has no statistics for, and emits junk such as "e." (issue 11).

Healing removes the last token's text from the prompt and constrains the first generated tokens
to spell it out again, each one the model's most likely among the tokens that agree with what
is left of that text (starting with it, or being a prefix of it). The removed text is stripped
from the suggestion afterwards. Nothing here depends on the tokenizer's kind: tokens are
compared as the bytes they stand for in the document (`IncrementalTokenizer.token_bytes`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cache_engine.text.incremental_tokenizer import IncrementalTokenizer

# The tail re-tokenized to find the last token starts a line before the cursor's, so that a
# newline merged into the last token (GPT-2 style "\n    ") is seen as it is in context.
_TAIL_CHARS = 256


@dataclass(frozen=True)
class Healing:
    """`left` split at the start of its last token: the prompt ends with `kept`, and the
    suggestion must start with `healed`."""

    kept: str
    healed: str


class TokenHealer:
    def __init__(self, tokenizer: IncrementalTokenizer, max_chars: int = 32):
        self._tokenizer = tokenizer
        self._max_chars = max_chars
        table = tokenizer.token_bytes()
        self._bytes = table
        order = sorted(range(len(table)), key=table.__getitem__)
        self._sorted_bytes = [table[i] for i in order]
        self._sorted_ids = order
        self._ids_by_bytes: dict[bytes, list[int]] = {}
        for token_id, data in enumerate(table):
            self._ids_by_bytes.setdefault(data, []).append(token_id)
        self._allowed_cache: dict[bytes, torch.Tensor] = {}

    def split(self, left: str) -> Healing:
        """Where to back `left` up to; nothing is backed up when the last token cannot be
        told reliably (the tail is a single token that might merge with text before it)."""
        cursor_line = left.rfind("\n", 0, max(0, len(left) - 1))
        line_before = left.rfind("\n", 0, max(0, cursor_line))
        tail_start = max(0, line_before, len(left) - _TAIL_CHARS)
        tail = left[tail_start:]
        if not tail:
            return Healing(left, "")
        ids = self._tokenizer.encode(tail)
        # A lone token may merge with what precedes the tail; a prompt healed down to nothing
        # has nothing to continue from.
        if len(ids) < 2:
            return Healing(left, "")
        try:
            healed = self._bytes[ids[-1]].decode("utf-8")
        except UnicodeDecodeError:
            return Healing(left, "")
        if not healed or len(healed) > self._max_chars or not left.endswith(healed):
            return Healing(left, "")
        return Healing(left[: len(left) - len(healed)], healed)

    def constraint(self, healed: str) -> HealingConstraint | None:
        """The decoding constraint that re-creates `healed`, or None when there is none."""
        return HealingConstraint(self, healed.encode("utf-8")) if healed else None

    def allowed(self, remaining: bytes) -> torch.Tensor:
        """Ids whose bytes start with `remaining` or are a non-empty prefix of it."""
        cached = self._allowed_cache.get(remaining)
        if cached is not None:
            return cached
        ids: list[int] = []
        low = bisect_left(self._sorted_bytes, remaining)
        high = low
        while high < len(self._sorted_bytes) and self._sorted_bytes[high].startswith(remaining):
            high += 1
        ids.extend(self._sorted_ids[low:high])
        for end in range(1, len(remaining)):
            ids.extend(self._ids_by_bytes.get(remaining[:end], ()))
        allowed = torch.tensor(sorted(set(ids)), dtype=torch.long)
        if len(self._allowed_cache) < 4096:
            self._allowed_cache[remaining] = allowed
        return allowed

    def token_length(self, token_id: int) -> int:
        return len(self._bytes[token_id])


class HealingConstraint:
    """Allows only tokens that agree with the healed text until it has been generated."""

    def __init__(self, healer: TokenHealer, healed: bytes):
        self._healer = healer
        self._healed = healed

    def __call__(self, generated: Sequence[int]) -> torch.Tensor | None:
        produced = sum(self._healer.token_length(i) for i in generated)
        if produced >= len(self._healed):
            return None
        return self._healer.allowed(self._healed[produced:])
