"""LSP positions (line, UTF-16 code unit) to and from str offsets (code points).

LSP lines end at "\\n", "\\r\\n" or "\\r" and nothing else (str.splitlines also splits at form
feeds, U+2028 and others, which would shift every line after them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lsprotocol import types

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


ENCODINGS = ("utf-16", "utf-8", "utf-32")


class PositionError(ValueError):
    """A position that names a line past the end of the document."""


@dataclass(frozen=True)
class ResolvedOffset:
    offset: int
    # The column fell inside one character's code units (between the two UTF-16 halves of an
    # emoji, say); offset is before that character.
    inside_character: bool = False
    # The character was past the end of its line (allowed by LSP: it means the line's end).
    clamped: bool = False


class LineIndex:
    """Line starts of one text, found lazily so a position near the top of a huge file stays
    cheap."""

    def __init__(self, text: str, encoding: str = "utf-16"):
        if encoding not in ENCODINGS:
            raise ValueError(f"position encoding {encoding!r} is not one of {', '.join(ENCODINGS)}")
        self.text = text
        self.encoding = encoding
        self._starts = [0]
        self._scanned = 0
        self._complete = False

    def line_count(self) -> int:
        self._scan_to(None)
        return len(self._starts)

    def resolve(self, position: types.Position) -> ResolvedOffset:
        """The str offset of `position`. A line equal to the line count means the end of the
        text (LSP clients use it for an edit that appends); anything further raises."""
        line, character = position.line, position.character
        if line < 0 or character < 0:
            raise PositionError(f"position {line}:{character} is negative")
        self._scan_to(line)
        if line >= len(self._starts):
            if line == len(self._starts) and character == 0:
                return ResolvedOffset(len(self.text))
            raise PositionError(
                f"line {line} is past the end of the document ({len(self._starts)} lines)"
            )
        start = self._starts[line]
        end = self._line_content_end(line)
        return _column_to_offset(self.text, start, end, character, self.encoding)

    def offset(self, position: types.Position) -> int:
        return self.resolve(position).offset

    def position(self, offset: int) -> types.Position:
        """The LSP position of str offset `offset` (clamped into the text)."""
        offset = min(max(offset, 0), len(self.text))
        while not self._complete and self._starts[-1] <= offset:
            self._scan_to(len(self._starts))
        low, high = 0, len(self._starts) - 1
        while low < high:
            middle = (low + high + 1) // 2
            if self._starts[middle] <= offset:
                low = middle
            else:
                high = middle - 1
        start = self._starts[low]
        column = encoded_length(self.text[start:offset], self.encoding)
        return types.Position(line=low, character=column)

    def _line_content_end(self, line: int) -> int:
        self._scan_to(line + 1)
        if line + 1 < len(self._starts):
            end = self._starts[line + 1]
            if self.text.startswith("\r\n", end - 2):
                return end - 2
            return end - 1
        return len(self.text)

    def _scan_to(self, line: int | None) -> None:
        """Find line starts up to `line` (all of them for None)."""
        if self._complete:
            return
        for match in _LINE_BREAK.finditer(self.text, self._scanned):
            self._starts.append(match.end())
            self._scanned = match.end()
            if line is not None and len(self._starts) > line:
                return
        self._complete = True
        self._scanned = len(self.text)


def encoded_length(text: str, encoding: str = "utf-16") -> int:
    """The length of `text` in code units of a position encoding."""
    if text.isascii() or encoding == "utf-32":
        return len(text)
    if encoding == "utf-8":
        return len(text.encode("utf-8", "surrogatepass"))
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def _units(char: str, encoding: str) -> int:
    if encoding == "utf-32":
        return 1
    if encoding == "utf-8":
        return len(char.encode("utf-8", "surrogatepass"))
    return 2 if ord(char) > 0xFFFF else 1


def _column_to_offset(
    text: str, start: int, end: int, character: int, encoding: str
) -> ResolvedOffset:
    line = text[start:end]
    if line.isascii() or character == 0 or encoding == "utf-32":
        return ResolvedOffset(start + min(character, len(line)), clamped=character > len(line))
    units = 0
    for index, char in enumerate(line):
        if units == character:
            return ResolvedOffset(start + index)
        width = _units(char, encoding)
        if units + width > character:
            return ResolvedOffset(start + index, inside_character=True)
        units += width
    return ResolvedOffset(end, clamped=units < character)
