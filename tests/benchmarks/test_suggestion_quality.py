"""The judgements of the ghost-text quality harness (benchmarks/suggestion_quality.py)."""

from __future__ import annotations

from benchmarks.suggestion_quality import choose_default, junk_start, meets_targets, right_start

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


def point(shown_rate: float, right: float, junk: float) -> dict[str, float]:
    return {"shown_rate": shown_rate, "right_start_of_shown": right, "junk_start_of_shown": junk}


def test_targets_must_hold_beyond_the_sampling_error() -> None:
    # 242 of 432 shown, junk 4.96 %: on the line, within its error, so not met.
    assert not meets_targets(point(0.56, 0.269, 0.0496), 432)
    # 167 shown, junk 2.4 %, right 32.3 %: clear of both lines.
    assert meets_targets(point(0.387, 0.323, 0.024), 432)
    # No junk among three shown is no evidence; neither is a shown rate under 30 %.
    assert not meets_targets(point(3 / 10, 1.0, 0.0), 10)
    assert not meets_targets(point(0.29, 0.5, 0.0), 10_000)


def test_the_default_is_the_most_shown_gate_that_meets_the_targets() -> None:
    curve = [
        {"min_confidence": 0.4, **point(0.56, 0.269, 0.0496)},
        {"min_confidence": 0.5, **point(0.387, 0.323, 0.024)},
        {"min_confidence": 0.6, **point(0.30, 0.35, 0.02)},
    ]
    configurations = [
        {"name": "no healing", "heal_tokens": False, "min_token_prob": 0.0, "gate_curve": curve},
        {"name": "healing", "heal_tokens": True, "min_token_prob": 0.1, "gate_curve": curve},
    ]
    chosen = choose_default(configurations, 432)
    assert chosen["meets_targets"]
    assert (chosen["configuration"], chosen["min_confidence"]) == ("healing", 0.5)
