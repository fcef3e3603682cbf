"""A change to a document's text, in str offsets, and how two texts differ."""

from __future__ import annotations

from dataclasses import dataclass


class DocumentError(ValueError):
    """A request names a document that is not open, or a change that does not fit its text."""


@dataclass(frozen=True)
class TextChange:
    """Replace text[start:end] with `text`; offsets count str characters (code points)."""

    start: int
    end: int
    text: str

    def apply(self, text: str) -> str:
        return text[: self.start] + self.text + text[self.end :]

    def check(self, length: int) -> None:
        if not 0 <= self.start <= self.end <= length:
            raise DocumentError(
                f"change range [{self.start}, {self.end}) does not fit a text of {length} "
                f"characters (need 0 <= start <= end <= {length})"
            )


def changed_span(old: str, new: str) -> tuple[int, int, int]:
    """(start, old_end, new_end): old[start:old_end] became new[start:new_end], the rest is
    common. Compares slices in halving steps so the work is done at C speed."""
    prefix = _common_length(old, new, from_end=False)
    limit = min(len(old), len(new)) - prefix
    suffix = min(_common_length(old, new, from_end=True), limit)
    return prefix, len(old) - suffix, len(new) - suffix


def _common_length(a: str, b: str, *, from_end: bool) -> int:
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        same = a[-middle:] == b[-middle:] if from_end else a[:middle] == b[:middle]
        if same:
            low = middle
        else:
            high = middle - 1
    return low


def line_suffix(text: str, cursor: int) -> str:
    """The text after `cursor` on its line, without the line break: what an inline item keeps
    after its insertion."""
    end = text.find("\n", cursor)
    return text[cursor : len(text) if end < 0 else end].rstrip("\r")
