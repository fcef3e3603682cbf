"""Context windows: placement within the token budget, line-aligned edges, stickiness."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cache_engine.completion.prompt_layout import (
    ContextWindow,
    PromptText,
    PromptWindowPolicy,
    line_end_at,
    line_start_at,
    prompt_text,
)
from cache_engine.model.loading import FimTokens
from cache_engine.text.text_change import TextChange

FIM = FimTokens("<P>", "<S>", "<M>")


def words(text: str) -> int:
    """A stand-in tokenizer: one token per whitespace-separated word, at least one per line."""
    return len(text.split()) + text.count("\n")


def numbered_lines(count: int) -> str:
    return "".join(f"line {i} a b c\n" for i in range(count))


def at_line_start(text: str, offset: int) -> bool:
    return offset in (0, len(text)) or text[offset - 1] == "\n"


def test_short_document_is_shown_whole() -> None:
    text = numbered_lines(10)
    policy = PromptWindowPolicy(max_prompt_tokens=1000, suffix_share=0.25, margin_lines=2)
    assert policy.place(text, 30, words, fim=True) == ContextWindow(0, len(text))


def test_long_document_window_fits_the_budget_and_splits_by_share() -> None:
    text = numbered_lines(2000)
    cursor = text.index("line 1000 ")
    policy = PromptWindowPolicy(max_prompt_tokens=400, suffix_share=0.25, margin_lines=2)
    window = policy.place(text, cursor, words, fim=True)
    assert at_line_start(text, window.start) and at_line_start(text, window.end)
    left, right = words(text[window.start : cursor]), words(text[cursor : window.end])
    assert left + right <= 400
    assert 0.6 < left / (left + right) < 0.9
    assert left + right > 0.7 * 400


def test_unused_budget_goes_to_the_other_side() -> None:
    text = numbered_lines(2000)
    policy = PromptWindowPolicy(max_prompt_tokens=400, suffix_share=0.25, margin_lines=2)
    near_start = policy.place(text, text.index("line 3 "), words, fim=True)
    assert near_start.start == 0 and words(text[: near_start.end]) > 0.7 * 400
    near_end = policy.place(text, text.index("line 1998 "), words, fim=True)
    assert near_end.end == len(text) and words(text[near_end.start :]) > 0.7 * 400


def test_plain_layout_uses_the_whole_budget_on_the_left() -> None:
    text = numbered_lines(2000)
    cursor = text.index("line 1000 ")
    policy = PromptWindowPolicy(max_prompt_tokens=400, suffix_share=0.25, margin_lines=2)
    window = policy.place(text, cursor, words, fim=False)
    assert window.end == cursor
    assert prompt_text(text, cursor, window, fim=False) == PromptText(
        text[window.start : cursor], None
    )
    assert words(text[window.start : cursor]) > 0.7 * 400


def test_one_line_longer_than_the_budget_is_cut_inside() -> None:
    text = "x " * 5000
    policy = PromptWindowPolicy(max_prompt_tokens=100, suffix_share=0.25, margin_lines=2)
    window = policy.place(text, 5000, words, fim=True)
    assert words(text[window.start : window.end]) <= 100
    assert window.start <= 5000 <= window.end


def test_fim_prompt_layout() -> None:
    text = "ab\ncd\nef\n"
    prompt = prompt_text(text, 4, ContextWindow(3, 9), fim=True)
    assert prompt == PromptText("c", "d\nef\n")
    assert prompt.render(FIM) == "<P>c<S>d\nef\n<M>"


def test_window_is_sticky_while_typing_and_moves_at_the_margin() -> None:
    text = numbered_lines(2000)
    policy = PromptWindowPolicy(max_prompt_tokens=400, suffix_share=0.25, margin_lines=5)
    cursor = text.index("line 1000 ")
    window = policy.place(text, cursor, words, fim=True)
    for typed in "abc":
        change = TextChange(cursor, cursor, typed)
        text = change.apply(text)
        window = window.follow(change, text)
        cursor += 1
        assert policy.keeps(text, cursor, window)
    near_top = text.index("\n", window.start) + 1
    assert not policy.keeps(text, near_top, window)
    assert not policy.keeps(text, window.end + 1, window)


def test_edit_above_the_window_shifts_it() -> None:
    text = numbered_lines(100)
    window = ContextWindow(text.index("line 50 "), text.index("line 60 "))
    change = TextChange(0, 0, "new line\nanother\n")
    new_text = change.apply(text)
    moved = window.follow(change, new_text)
    assert new_text[moved.start : moved.end] == text[window.start : window.end]


def test_deleting_across_an_edge_snaps_it_to_a_line_start() -> None:
    text = numbered_lines(100)
    start = text.index("line 50 ")
    window = ContextWindow(start, text.index("line 60 "))
    change = TextChange(start - 5, start + 5, "")
    new_text = change.apply(text)
    moved = window.follow(change, new_text)
    assert at_line_start(new_text, moved.start) and moved.start <= start - 5


@settings(deadline=None)  # timing varies on a loaded machine
@given(
    st.text(alphabet="ab\n", max_size=40),
    st.integers(0, 40),
    st.integers(0, 40),
    st.integers(0, 40),
    st.integers(0, 40),
    st.text(alphabet="xy\n", max_size=5),
)
def test_followed_window_is_valid(text: str, a: int, b: int, c: int, d: int, inserted: str) -> None:
    n = len(text)
    start, end = sorted((min(a, n), min(b, n)))
    window = ContextWindow(line_start_at(text, start), line_end_at(text, end))
    lo, hi = sorted((min(c, n), min(d, n)))
    change = TextChange(lo, hi, inserted)
    new_text = change.apply(text)
    moved = window.follow(change, new_text)
    assert 0 <= moved.start <= moved.end <= len(new_text)
    assert at_line_start(new_text, moved.start) and at_line_start(new_text, moved.end)
