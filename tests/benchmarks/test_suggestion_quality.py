"""The judgements of the ghost-text quality harness (benchmarks/suggestion_quality.py)."""

from __future__ import annotations

from benchmarks.suggestion_quality import junk_start, right_start

TEXT = "from .padding import PaddingDimensions\n\ndef pad(value):\n    return value.\n"


def at(marker: str) -> int:
    return TEXT.index(marker) + len(marker)


def test_an_unindented_line_start_is_judged_by_the_suggestion_alone() -> None:
    # The line above ends in a word; the suggestion must not be glued onto it.
    cursor = at("PaddingDimensions\n")
    assert not junk_start("from .segment import Segment", "import sys", TEXT, cursor)
    assert junk_start("zqxw = 1", "import sys", TEXT, cursor)


def test_a_suggestion_inside_a_word_is_judged_by_the_whole_word() -> None:
    cursor = at("return val")
    assert not junk_start("ue.strip()", "ue", TEXT, cursor)  # "value" is in the file
    assert junk_start("qx.strip()", "ue", TEXT, cursor)  # "valqx" names nothing


def test_lone_letters_and_comment_stutters_are_junk_and_right_starts_never() -> None:
    cursor = at("return value.")
    assert junk_start("e.append(1)", "strip()", TEXT, cursor)
    assert junk_start("#  #", "strip()", TEXT, cursor)
    assert not junk_start("strip()", "strip()", TEXT, cursor)
    assert right_start("strip() + 1", "strip() or value")
    assert not right_start("split()", "strip()")
