"""Token-level edits: the unit in which text changes reach the editable cache."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenEdit:
    """Replace cached tokens [start, end) with new_ids.

    Indices refer to the token sequence as it was *before* the batch the edit belongs to, so a
    batch of edits can be applied in one pass. Insert: start == end. Delete: new_ids == ().
    """

    start: int
    end: int
    new_ids: tuple[int, ...] = ()

    @property
    def delta(self) -> int:
        return len(self.new_ids) - (self.end - self.start)

    @classmethod
    def insert(cls, index: int, ids: Sequence[int]) -> TokenEdit:
        return cls(index, index, tuple(ids))

    @classmethod
    def delete(cls, start: int, end: int) -> TokenEdit:
        return cls(start, end, ())

    @classmethod
    def replace(cls, start: int, end: int, ids: Sequence[int]) -> TokenEdit:
        return cls(start, end, tuple(ids))


def validate_edits(edits: Sequence[TokenEdit], length: int) -> list[TokenEdit]:
    """Check a batch against a sequence of `length` tokens and return it sorted by position.

    Raises ValueError naming the offending edit when an index is out of range or two edits
    overlap. Two inserts at the same index are ambiguous in order and count as overlapping.
    """
    ordered = sorted(edits, key=lambda e: (e.start, e.end))
    previous: TokenEdit | None = None
    for edit in ordered:
        if not (0 <= edit.start <= edit.end <= length):
            raise ValueError(
                f"token edit {edit} is out of range for a sequence of {length} tokens "
                f"(need 0 <= start <= end <= {length})"
            )
        if any(not isinstance(i, int) or i < 0 for i in edit.new_ids):
            raise ValueError(f"token edit {edit} has ids that are not non-negative ints")
        if previous is not None and (
            edit.start < previous.end or (edit.start == previous.start == previous.end)
        ):
            raise ValueError(f"token edits overlap: {previous} and {edit}")
        previous = edit
    return ordered


def apply_to_ids(ids: Sequence[int], edits: Sequence[TokenEdit]) -> list[int]:
    """The token sequence after a validated batch of edits."""
    result: list[int] = []
    cursor = 0
    for edit in validate_edits(edits, len(ids)):
        result.extend(ids[cursor : edit.start])
        result.extend(edit.new_ids)
        cursor = edit.end
    result.extend(ids[cursor:])
    return result
