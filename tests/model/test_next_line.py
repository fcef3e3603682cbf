"""The next line as the exact-match evaluation predicts it (model/next_line.py)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cache_engine.kv.editable_cache import EditableCache, most_likely
from cache_engine.model.next_line import StartsNewLine, generate_next_line, next_line_context

CONTEXT = "def area(width, height):\n    result = width * height\n    return result\n"


class RecordingGreedy:
    """The model's own greedy choice, remembering which ids each step was allowed."""

    def __init__(self) -> None:
        self.allowed: list[torch.Tensor | None] = []
        self.chosen: list[int] = []

    def __call__(
        self, logits: torch.Tensor, ids: Sequence[int], allowed: torch.Tensor | None
    ) -> tuple[int, float]:
        self.allowed.append(allowed)
        token = most_likely(logits, allowed)
        self.chosen.append(token)
        return token, float(torch.log_softmax(logits.float(), -1)[token])


def test_only_tokens_that_begin_with_a_newline_may_come_first(default_tokenizer) -> None:
    constraint = StartsNewLine(default_tokenizer)
    allowed = constraint([])
    assert allowed is not None
    texts = [default_tokenizer.decode([i]) for i in allowed.tolist()]
    assert "\n" in texts and all(text.startswith("\n") for text in texts)
    others = set(range(len(default_tokenizer))) - set(allowed.tolist())
    assert not any(default_tokenizer.decode([i]).startswith("\n") for i in others)
    assert constraint([allowed[0].item()]) is None


def _predict(loaded, start_new_line: bool) -> tuple[str, RecordingGreedy]:
    ids = loaded.tokenizer(next_line_context(CONTEXT), add_special_tokens=False)["input_ids"]
    cache = EditableCache(loaded.model, strategy="full")
    cache.reset(ids)
    chooser = RecordingGreedy()
    line = generate_next_line(
        cache, loaded.tokenizer, loaded.eos_token_ids, choose=chooser, start_new_line=start_new_line
    )
    return line, chooser


def test_the_first_token_starts_the_next_line_and_the_rest_are_free(loaded_random_model) -> None:
    line, chooser = _predict(loaded_random_model, start_new_line=True)
    tokenizer = loaded_random_model.tokenizer
    assert tokenizer.decode([chooser.chosen[0]]).startswith("\n")
    assert chooser.allowed[0] is not None and all(a is None for a in chooser.allowed[1:])
    # The line is what the constrained generation wrote after its newline.
    written = tokenizer.decode(chooser.chosen)
    assert line == written[1:].split("\n")[0]


def test_left_free_random_weights_go_on_with_the_last_line(loaded_random_model) -> None:
    line, chooser = _predict(loaded_random_model, start_new_line=False)
    assert all(a is None for a in chooser.allowed)
    # Random weights rarely start with a newline token (45 of 4,096), so the free generation
    # continues `return result` and the prediction is empty: what the constraint is for.
    assert not loaded_random_model.tokenizer.decode([chooser.chosen[0]]).startswith("\n")
    assert line == ""
