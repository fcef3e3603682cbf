"""UTF-16 LSP positions against str offsets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lsprotocol import types

from lsp_server.positions import LineIndex, PositionError, encoded_length


def at(line: int, character: int) -> types.Position:
    return types.Position(line=line, character=character)


def test_non_bmp_characters_take_two_units() -> None:
    index = LineIndex("a😀b\nc")
    assert index.offset(at(0, 1)) == 1
    assert index.offset(at(0, 3)) == 2
    assert index.offset(at(1, 1)) == 5
    assert index.position(2) == at(0, 3)


def test_position_inside_a_surrogate_pair_rounds_down() -> None:
    resolved = LineIndex("😀x").resolve(at(0, 1))
    assert resolved.offset == 0 and resolved.inside_character


def test_line_breaks_are_lsp_ones_only() -> None:
    text = "a\r\nb\rc\nd\x0ce\u2028f"
    index = LineIndex(text)
    assert index.line_count() == 4
    assert index.offset(at(1, 0)) == 3
    assert index.offset(at(2, 0)) == 5
    assert index.offset(at(3, 5)) == len(text)


def test_character_past_the_line_end_means_the_line_end() -> None:
    index = LineIndex("ab\r\ncd")
    resolved = index.resolve(at(0, 10))
    assert resolved.offset == 2 and resolved.clamped


def test_line_past_the_end() -> None:
    index = LineIndex("ab\n")
    assert index.offset(at(1, 0)) == 3
    assert index.offset(at(2, 0)) == 3  # one past the last line: the end (appending)
    with pytest.raises(PositionError, match="line 3 is past the end"):
        index.offset(at(3, 0))


@settings(deadline=None)  # timing varies on a loaded machine
@given(st.lists(st.sampled_from(["a", "é", "😀", "\n", "\r\n", "\r"]), max_size=30).map("".join))
def test_offsets_and_positions_round_trip(text: str) -> None:
    for encoding in ("utf-16", "utf-8", "utf-32"):
        index = LineIndex(text, encoding)
        for offset in range(len(text) + 1):
            if text[offset - 1 : offset + 1] == "\r\n":
                continue  # between \r and \n is not a position of its own
            position = index.position(offset)
            assert LineIndex(text, encoding).offset(position) == offset


def test_encoded_length() -> None:
    assert encoded_length("a😀é") == 4
    assert encoded_length("a😀é", "utf-8") == 7
    assert encoded_length("a😀é", "utf-32") == 3


def test_utf8_and_utf32_columns() -> None:
    text = "é😀x\n"
    utf8 = LineIndex(text, "utf-8")
    assert utf8.offset(at(0, 2)) == 1 and utf8.offset(at(0, 6)) == 2
    assert utf8.resolve(at(0, 3)).inside_character
    assert utf8.position(2) == at(0, 6)
    utf32 = LineIndex(text, "utf-32")
    assert utf32.offset(at(0, 2)) == 2 and utf32.position(3) == at(0, 3)
