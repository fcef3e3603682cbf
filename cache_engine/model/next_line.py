"""Predict the line that follows a text: the unit of the exact-match evaluations.

Byte-level BPE tokenizers merge a newline with the indentation after it ("\\n   " + " return"),
so a prompt that ends in a bare "\\n" token tells the model the next line is *not* indented, and
it predicts accordingly. The prompt therefore stops before the last newline, and the model writes
the newline and the indentation itself; the predicted line is what follows that newline.

Left free, the model often goes on with the line the prompt ends in instead (a quarter of the
held-out lines, mostly in docstrings and comments), and predicts no next line at all. The
question is what the next line is, so by default the first token must start with the newline:
the token healing the engine does at a line start (text/token_healing.py), where the prompt is
backed up over its newline and the first token must re-create it. That holds for tokenizers
that keep a newline apart from the text before it, as the default model's does. Where a token
holds punctuation and the newline after it (Qwen2's "):\n"), healing backs up over that whole
token, and a model evaluated here starts from a boundary it rarely saw.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from functools import cache

import torch

from cache_engine.kv.editable_cache import EditableCache, NextTokenChooser


def next_line_context(text_before_line: str) -> str:
    """The prompt text for predicting the line that starts right after text_before_line."""
    return text_before_line[:-1] if text_before_line.endswith("\n") else text_before_line


class StartsNewLine:
    """A TokenConstraint: the first token must begin with a newline, and the rest are free."""

    def __init__(self, tokenizer) -> None:
        self._allowed = _newline_tokens(tokenizer)

    def __call__(self, generated: Sequence[int]) -> torch.Tensor | None:
        return None if generated else self._allowed


@cache
def _newline_tokens(tokenizer) -> torch.Tensor:
    ids = [i for i in range(len(tokenizer)) if tokenizer.decode([i]).startswith("\n")]
    if not ids:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no token that starts a line")
    return torch.tensor(ids, dtype=torch.long)


def generate_next_line(
    cache: EditableCache,
    tokenizer,
    eos_token_ids: Collection[int],
    max_new_tokens: int = 48,
    choose: NextTokenChooser | None = None,
    start_new_line: bool = True,
) -> str:
    """Greedy (by the model, or by `choose`): the text of the line after the cached context
    (which ends before its newline). With `start_new_line` False the model may go on with the
    context's last line instead, which predicts nothing."""
    pieces: list[int] = []
    stop_ids = set(eos_token_ids) | set(tokenizer.all_special_ids)

    def until_line_ends(token: int, log_prob: float) -> bool:
        if token in stop_ids:
            return False
        pieces.append(token)
        return "\n" not in _after_first_newline(tokenizer.decode(pieces))

    constraint = StartsNewLine(tokenizer) if start_new_line else None
    cache.generate(max_new_tokens, until_line_ends, choose=choose, constraint=constraint)
    text = tokenizer.decode(pieces)
    if "\n" not in text or text[: text.index("\n")].strip():
        # The model went on with the previous line instead of starting a new one: no prediction.
        return ""
    return _after_first_newline(text).split("\n")[0].rstrip("\r")


def _after_first_newline(text: str) -> str:
    return text[text.index("\n") + 1 :] if "\n" in text else ""
