"""What was generated at a document's recent places, to draft from when asked there again."""

from __future__ import annotations

import pytest

from cache_engine.completion.recall import (
    PLACE_CHARS_AFTER,
    PLACE_CHARS_BEFORE,
    CompletionRecall,
    place_at,
)

TEXT = "".join(f"line {i} = compute({i})\n" for i in range(100))


def test_a_place_is_the_text_around_the_cursor_wherever_it_sits() -> None:
    cursor = TEXT.index("line 80")
    far_edit = "# a comment typed far above\n" + TEXT
    assert place_at(far_edit, cursor + len("# a comment typed far above\n")) == place_at(
        TEXT, cursor
    )
    near = cursor - PLACE_CHARS_BEFORE // 2
    assert place_at(TEXT[:near] + "x" + TEXT[near:], cursor + 1) != place_at(TEXT, cursor)
    after = cursor + PLACE_CHARS_AFTER // 2
    assert place_at(TEXT[:after] + "x" + TEXT[after:], cursor) != place_at(TEXT, cursor)
    assert place_at(TEXT, 0) == ("", TEXT[:PLACE_CHARS_AFTER])


def test_recall_returns_what_was_generated_at_the_same_place() -> None:
    recall = CompletionRecall()
    cursor = TEXT.index("line 50")
    assert recall.recall(TEXT, cursor) == ()
    recall.remember(TEXT, cursor, [5, 6, 7])
    assert recall.recall(TEXT, cursor) == (5, 6, 7)
    assert recall.recall("# moved\n" + TEXT, cursor + len("# moved\n")) == (5, 6, 7)
    assert recall.recall(TEXT, cursor + 1) == ()


def test_a_shorter_generation_that_agrees_keeps_the_longer_one() -> None:
    recall = CompletionRecall()
    cursor = TEXT.index("line 50")
    recall.remember(TEXT, cursor, [5, 6, 7, 8])
    recall.remember(TEXT, cursor, [5, 6])
    assert recall.recall(TEXT, cursor) == (5, 6, 7, 8)
    recall.remember(TEXT, cursor, [5, 9])
    assert recall.recall(TEXT, cursor) == (5, 9)
    recall.remember(TEXT, cursor, [])
    assert recall.recall(TEXT, cursor) == ()


def test_the_least_recently_used_place_is_forgotten_first() -> None:
    recall = CompletionRecall(capacity=2)
    places = [TEXT.index(f"line {i} ") for i in (10, 40, 70)]
    recall.remember(TEXT, places[0], [1])
    recall.remember(TEXT, places[1], [2])
    assert recall.recall(TEXT, places[0]) == (1,)  # now the most recent
    recall.remember(TEXT, places[2], [3])
    assert len(recall) == 2
    assert recall.recall(TEXT, places[1]) == ()
    assert recall.recall(TEXT, places[0]) == (1,)
    assert recall.recall(TEXT, places[2]) == (3,)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity must be at least 1, got 0"):
        CompletionRecall(capacity=0)
