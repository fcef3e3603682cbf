"""Which part of a document goes into the prompt, and in which layout.

With FIM tokens the prompt has one of two layouts (the markers are token ids, never text):

    psm:  FIM_PREFIX + left context + FIM_SUFFIX + right context + FIM_MIDDLE
    spm:  FIM_SUFFIX + right context + FIM_PREFIX + left context + FIM_MIDDLE

and it is the left context alone otherwise. The layout lives in the editable cache. Under psm,
typing at the cursor inserts just before FIM_SUFFIX: `pie` needs no re-encoding of the right
context, but the right context goes stale. Under spm, typing appends to the end of the left
context, right before FIM_MIDDLE, so nothing but that marker goes stale.

Long documents only show a window around the cursor. Its edges sit at line boundaries and are
sticky: they follow the text through edits like editor marks and move only when the cursor gets
within a margin of an edge or the prompt outgrows its token budget. Moving an edge on every
keystroke would turn each keystroke into an edit at both ends of the prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cache_engine.text.text_change import TextChange

if TYPE_CHECKING:
    from cache_engine.model.loading import FimTokens

FimLayout = Literal["psm", "spm"]

# A freshly placed window fills only this share of the token budget, so typing has room to grow
# the prompt before the window must move again.
PLACEMENT_FILL = 0.85


@dataclass(frozen=True)
class ContextWindow:
    """Document offsets [start, end) shown to the model; start and end sit at line starts."""

    start: int
    end: int

    def follow(self, change: TextChange, new_text: str) -> ContextWindow:
        """The window after `change`, which turned the old text into `new_text`."""
        delta = len(change.text) - (change.end - change.start)
        start, end = self.start, self.end
        # Text inserted at an edge lands inside the window: start is inclusive, end follows.
        if start > change.start:
            start = change.start if start < change.end else start + delta
        if end >= change.end:
            end += delta
        elif end > change.start:
            end = change.start + len(change.text)
        return ContextWindow(line_start_at(new_text, start), line_end_at(new_text, max(start, end)))


@dataclass(frozen=True)
class PromptWindowPolicy:
    """Token budget and stickiness of the context window."""

    max_prompt_tokens: int
    suffix_share: float
    margin_lines: int

    def keeps(self, text: str, cursor: int, window: ContextWindow, *, fim: bool = True) -> bool:
        """Whether `window` can stay for a completion at `cursor` (token budget checked later).

        A plain prompt ends at the cursor, wherever the window's end is.
        """
        if not window.start <= cursor or window.end > len(text):
            return False
        if window.start > 0 and text.count("\n", window.start, cursor) < self.margin_lines:
            return False
        if not fim:
            return True
        if cursor > window.end:
            return False
        if window.end < len(text) and text.count("\n", cursor, window.end) < self.margin_lines:
            return False
        return True

    def place(
        self,
        text: str,
        cursor: int,
        count_tokens: Callable[[str], int],
        *,
        fim: bool,
        fill: float = PLACEMENT_FILL,
    ) -> ContextWindow:
        """A fresh window around `cursor` whose prompt is about `fill` of the budget.

        Lines are added outward from the cursor, each side up to its share; what one side
        cannot use (it reached the start or end of the file) goes to the other.
        """
        budget = max(1, int(self.max_prompt_tokens * fill) - 3)
        right_budget = int(budget * self.suffix_share) if fim else 0
        left_budget = budget - right_budget
        left_start, left_used = _grow_left(text, cursor, left_budget, count_tokens)
        right_end, right_used = _grow_right(text, cursor, right_budget, count_tokens, fim)
        if fim and left_start == 0 and left_used < left_budget:
            right_end, _ = _grow_right(
                text, cursor, budget - left_used, count_tokens, fim, start_end=right_end
            )
        elif fim and right_end == len(text) and right_used < right_budget:
            left_start, _ = _grow_left(
                text, cursor, budget - right_used, count_tokens, start=left_start
            )
        return ContextWindow(left_start, right_end if fim else max(cursor, right_end))


@dataclass(frozen=True)
class PromptText:
    """The document text a prompt shows: `left` of the cursor and, for FIM, `right` of it.

    Special tokens are never text: a document may contain "<|fim_suffix|>" and it must stay
    ordinary characters. The engine puts the FIM token ids around the tokenized parts.
    """

    left: str
    right: str | None  # None: plain left-context prompt
    # The end of the text before the cursor that `left` leaves out for the model to re-create
    # (token healing); the suggestion starts with it, and it is stripped again.
    healed: str = ""

    def render(self, fim: FimTokens | None, layout: FimLayout = "psm") -> str:
        """The prompt as one string, for logs and tests."""
        if fim is None or self.right is None:
            return self.left
        if layout == "spm":
            return fim.suffix + self.right + fim.prefix + self.left + fim.middle
        return fim.prefix + self.left + fim.suffix + self.right + fim.middle


@dataclass(frozen=True)
class FimMarkers:
    """The FIM marker token ids."""

    prefix: int
    suffix: int
    middle: int


def assemble(
    layout: FimLayout, markers: FimMarkers, left_ids: list[int], right_ids: list[int]
) -> list[int]:
    """The prompt's token ids in `layout`."""
    if layout == "spm":
        return [markers.suffix, *right_ids, markers.prefix, *left_ids, markers.middle]
    return [markers.prefix, *left_ids, markers.suffix, *right_ids, markers.middle]


def part_starts(layout: FimLayout, left_tokens: int, right_tokens: int) -> tuple[int, int]:
    """(index of the left part's first token, index of the right part's first token) in a
    prompt assembled in `layout`."""
    if layout == "spm":
        return 2 + right_tokens, 1
    return 1, 2 + left_tokens


def prompt_text(text: str, cursor: int, window: ContextWindow, fim: bool) -> PromptText:
    return PromptText(text[window.start : cursor], text[cursor : window.end] if fim else None)


def line_start_at(text: str, offset: int) -> int:
    """The start of the line holding `offset` (offset itself when it starts a line)."""
    offset = min(max(offset, 0), len(text))
    return text.rfind("\n", 0, offset) + 1


def line_end_at(text: str, offset: int) -> int:
    """The first line start at or after `offset`, or the end of the text."""
    offset = min(max(offset, 0), len(text))
    if offset == 0 or offset == len(text) or text[offset - 1] == "\n":
        return offset
    newline = text.find("\n", offset)
    return len(text) if newline < 0 else newline + 1


# At least as many characters as one token covers (45 in the shipped tokenizer), so text longer
# than budget * this cannot fit and is cut or skipped without being tokenized: one 10 MB line
# otherwise costs 20 s a completion. A tokenizer with longer tokens only gets a smaller window.
MAX_CHARS_PER_TOKEN = 64


def _grow_left(
    text: str,
    cursor: int,
    budget: int,
    count_tokens: Callable[[str], int],
    *,
    start: int | None = None,
) -> tuple[int, int]:
    """(window start, tokens used) adding whole lines above `cursor` within `budget`."""
    edge = line_start_at(text, cursor) if start is None else start
    reach = budget * MAX_CHARS_PER_TOKEN
    if cursor - edge > reach:
        return cursor - _chars_within(
            text[cursor - reach : cursor], budget, count_tokens, from_end=True
        ), budget
    used = count_tokens(text[edge:cursor]) if edge < cursor else 0
    if used > budget:
        # One line longer than the budget (minified code, binary junk): cut inside it.
        return cursor - _chars_within(
            text[edge:cursor], budget, count_tokens, from_end=True
        ), budget
    while edge > 0:
        previous = text.rfind("\n", 0, edge - 1) + 1
        if edge - previous > (budget - used) * MAX_CHARS_PER_TOKEN:
            break
        cost = count_tokens(text[previous:edge])
        if used + cost > budget:
            break
        used += cost
        edge = previous
    return edge, used


def _grow_right(
    text: str,
    cursor: int,
    budget: int,
    count_tokens: Callable[[str], int],
    fim: bool,
    *,
    start_end: int | None = None,
) -> tuple[int, int]:
    """(window end, tokens used) adding whole lines below `cursor` within `budget`."""
    if not fim:
        return cursor, 0
    edge = cursor if start_end is None else start_end
    used = count_tokens(text[cursor:edge]) if edge > cursor else 0
    if start_end is None:
        line_end = line_end_at(text, cursor)
        reach = budget * MAX_CHARS_PER_TOKEN
        if line_end - cursor > reach:
            return cursor + _chars_within(
                text[cursor : cursor + reach], budget, count_tokens
            ), budget
        cost = count_tokens(text[cursor:line_end]) if line_end > cursor else 0
        if cost > budget:
            return cursor + _chars_within(text[cursor:line_end], budget, count_tokens), budget
        edge, used = line_end, cost
    while edge < len(text):
        newline = text.find("\n", edge)
        following = len(text) if newline < 0 else newline + 1
        if following - edge > (budget - used) * MAX_CHARS_PER_TOKEN:
            break
        cost = count_tokens(text[edge:following])
        if used + cost > budget:
            break
        used += cost
        edge = following
    return edge, used


def _chars_within(
    text: str, budget: int, count_tokens: Callable[[str], int], *, from_end: bool = False
) -> int:
    """The most characters from one end of `text` whose tokens fit `budget` (binary search)."""
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        piece = text[len(text) - middle :] if from_end else text[:middle]
        if count_tokens(piece) <= budget:
            low = middle
        else:
            high = middle - 1
    return low
