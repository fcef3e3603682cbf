"""Predict the line that follows a text: the unit of the exact-match evaluations.

Byte-level BPE tokenizers merge a newline with the indentation after it ("\\n   " + " return"),
so a prompt that ends in a bare "\\n" token tells the model the next line is *not* indented, and
it predicts accordingly. The prompt therefore stops before the last newline, and the model writes
the newline and the indentation itself; the predicted line is what follows that newline.
"""

from __future__ import annotations

from collections.abc import Collection

from cache_engine.kv.editable_cache import EditableCache, NextTokenChooser


def next_line_context(text_before_line: str) -> str:
    """The prompt text for predicting the line that starts right after text_before_line."""
    return text_before_line[:-1] if text_before_line.endswith("\n") else text_before_line


def generate_next_line(
    cache: EditableCache,
    tokenizer,
    eos_token_ids: Collection[int],
    max_new_tokens: int = 48,
    choose: NextTokenChooser | None = None,
) -> str:
    """Greedy (by the model, or by `choose`): the text of the line after the cached context
    (which ends before its newline)."""
    pieces: list[int] = []
    stop_ids = set(eos_token_ids) | set(tokenizer.all_special_ids)

    def until_line_ends(token: int, log_prob: float) -> bool:
        if token in stop_ids:
            return False
        pieces.append(token)
        return "\n" not in _after_first_newline(tokenizer.decode(pieces))

    cache.generate(max_new_tokens, until_line_ends, choose=choose)
    text = tokenizer.decode(pieces)
    if "\n" not in text or text[: text.index("\n")].strip():
        # The model went on with the previous line instead of starting a new one: no prediction.
        return ""
    return _after_first_newline(text).split("\n")[0].rstrip("\r")


def _after_first_newline(text: str) -> str:
    return text[text.index("\n") + 1 :] if "\n" in text else ""
