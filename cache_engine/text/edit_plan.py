"""What re-tokenizing a text edit produces: the token edits, the new ids, and counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from cache_engine.kv.token_edits import TokenEdit


class TokenizerRoundTripError(ValueError):
    """The tokenizer cannot reproduce a text from its ids, so no edit can be trusted."""


@dataclass
class TokenizationStats:
    """Counters over an IncrementalTokenizer's lifetime; the only state it keeps."""

    calls: int = 0
    regions: int = 0
    windows_widened: int = 0
    full_retokenizations: int = 0
    tokens_retokenized: int = 0
    chars_retokenized: int = 0
    mismatches: int = 0


@dataclass(frozen=True)
class TextEditPlan:
    """Edits (indices into the old ids, sorted, non-overlapping) and what they produce."""

    new_text: str
    edits: list[TokenEdit]
    new_ids: list[int]
    window_chars: int
    _old_offsets: list[int] = field(repr=False, compare=False)
    _token_lengths: list[int] = field(repr=False, compare=False)

    @cached_property
    def new_offsets(self) -> list[int]:
        """Token boundary offsets of new_ids, to pass back as `offsets` with the next edit."""
        old = self._old_offsets
        lengths = self._token_lengths
        out: list[int] = []
        shift = 0
        cursor = 0
        for edit in self.edits:
            segment = old[cursor : edit.start + 1]
            out.extend(segment if shift == 0 else [x + shift for x in segment])
            position = old[edit.start] + shift
            for token in edit.new_ids:
                position += lengths[token]
                out.append(position)
            shift = position - old[edit.end]
            cursor = edit.end + 1
        tail = old[cursor:]
        out.extend(tail if shift == 0 else [x + shift for x in tail])
        return out
