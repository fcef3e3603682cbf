"""Fill-in-the-middle training samples split where people ask for completions.

Random character cuts teach a model that the middle starts inside whitespace runs and in the
middle of words, so at a line start it emits a FIM marker and then junk. Editors ask at a few
kinds of places instead: after the indentation of a line, right after `.`, `(`, `=` or a keyword,
somewhere inside a line, and at a line start where whole lines are missing. Most samples are cut
at such a place; a few keep random cuts so the model still copes with odd cursors.

Each sample is tokenized the way the engine builds its prompt: left, right and middle are
tokenized separately and the FIM markers are ids between them, never text. Both layouts the
engine can use are produced:

    psm: FIM_PREFIX left FIM_SUFFIX right FIM_MIDDLE middle END
    spm: FIM_SUFFIX right FIM_PREFIX left FIM_MIDDLE middle END
"""

from __future__ import annotations

import keyword
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

FimLayout = Literal["psm", "spm"]
SplitKind = Literal["line_start", "after_trigger", "mid_line", "lines", "random"]

# Shares of the split kinds; the rest of the probability mass is random cuts.
SPLIT_WEIGHTS: dict[SplitKind, float] = {
    "line_start": 0.3,
    "after_trigger": 0.25,
    "mid_line": 0.15,
    "lines": 0.2,
    "random": 0.1,
}
_KEYWORDS = "|".join(sorted((k for k in keyword.kwlist if k.isalpha()), key=len, reverse=True))
# A cursor right after one of these is where completion requests cluster.
_TRIGGER = re.compile(rf"[.(=\[,]|\b(?:{_KEYWORDS}) ")
_MAX_MIDDLE_LINES = 8


@dataclass(frozen=True)
class FimSplit:
    """text == left + middle + right."""

    left: str
    middle: str
    right: str
    kind: SplitKind


def split_for_fim(text: str, rng: random.Random) -> FimSplit:
    """Cut `text` at a place drawn from SPLIT_WEIGHTS; falls back to random cuts where a kind
    finds no place (a chunk without code lines)."""
    kinds = list(SPLIT_WEIGHTS)
    kind = rng.choices(kinds, weights=[SPLIT_WEIGHTS[k] for k in kinds])[0]
    lines = _code_lines(text)
    if kind != "random" and lines:
        cut = _cut(kind, text, lines, rng)
        if cut is not None:
            start, end = cut
            return FimSplit(text[:start], text[start:end], text[end:], kind)
    a, b = sorted(rng.randrange(len(text) + 1) for _ in range(2))
    return FimSplit(text[:a], text[a:b], text[b:], "random")


def _code_lines(text: str) -> list[tuple[int, int, int]]:
    """(line start, first visible character, end before the newline) of non-blank lines."""
    out = []
    position = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        stripped = body.lstrip()
        if stripped:
            out.append((position, position + len(body) - len(stripped), position + len(body)))
        position += len(line)
    return out


def _cut(
    kind: SplitKind, text: str, lines: list[tuple[int, int, int]], rng: random.Random
) -> tuple[int, int] | None:
    """(middle start, middle end) for one split kind, or None when it has no place here."""
    index = rng.randrange(len(lines))
    _, first, end = lines[index]
    if kind == "line_start":
        return first, end
    if kind == "mid_line":
        if end - first < 2:
            return None
        return rng.randrange(first + 1, end), end
    if kind == "after_trigger":
        candidates = [m.end() for m in _TRIGGER.finditer(text, first, end) if m.end() < end]
        if not candidates:
            return None
        return rng.choice(candidates), end
    # "lines": one or more whole lines missing below the cursor, cursor after the indentation.
    count = rng.randint(1, _MAX_MIDDLE_LINES)
    last = lines[min(len(lines) - 1, index + count - 1)]
    return first, last[2]


def fim_ids(
    split: FimSplit,
    encode: Callable[[str], list[int]],
    *,
    layout: FimLayout,
    prefix_id: int,
    suffix_id: int,
    middle_id: int,
    end_id: int,
) -> list[int]:
    """Token ids of one sample, each part tokenized alone as the engine tokenizes its prompt."""
    left, right, middle = encode(split.left), encode(split.right), encode(split.middle)
    if layout == "psm":
        head = [prefix_id, *left, suffix_id, *right]
    else:
        head = [suffix_id, *right, prefix_id, *left]
    return [*head, middle_id, *middle, end_id]
