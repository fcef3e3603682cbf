"""The default model's training data: the corpus allowlist, FIM splits and packed batches."""

from __future__ import annotations

import random

import pytest
from transformers import PreTrainedTokenizerBase

from cache_engine.model.corpus import (
    EVALUATION_PACKAGES,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    SourceFile,
    collect_sources,
    is_generated,
)
from cache_engine.model.fim_samples import SPLIT_WEIGHTS, FimSplit, fim_ids, split_for_fim
from cache_engine.model.training import TrainingStream

CODE = '''class Stack:
    """A last-in first-out stack."""

    def __init__(self, items=None):
        self.items = list(items or [])

    def push(self, item):
        self.items.append(item)

    def pop(self):
        if not self.items:
            raise IndexError("pop from an empty stack")
        return self.items.pop()
'''


def test_splits_put_the_cursor_where_editors_ask() -> None:
    rng = random.Random(0)
    kinds: dict[str, int] = {}
    for _ in range(2000):
        split = split_for_fim(CODE, rng)
        assert split.left + split.middle + split.right == CODE
        kinds[split.kind] = kinds.get(split.kind, 0) + 1
        line_before = split.left.rsplit("\n", 1)[-1]
        if split.kind == "line_start" or split.kind == "lines":
            # After the indentation, never inside it or inside a word.
            assert line_before.strip() == ""
            assert split.middle[:1].strip()
        if split.kind == "after_trigger":
            assert line_before.endswith((".", "(", "=", "[", ",", " "))
        if split.kind in ("line_start", "after_trigger", "mid_line"):
            # The middle ends the line: the model learns to stop there.
            assert "\n" not in split.middle
            assert split.right == "" or split.right.startswith("\n")
    assert set(kinds) == set(SPLIT_WEIGHTS)
    assert kinds["random"] < 0.2 * sum(kinds.values())


def test_fim_ids_use_marker_ids_in_both_layouts(
    default_tokenizer: PreTrainedTokenizerBase,
) -> None:
    vocab = default_tokenizer.get_vocab()
    p, s, m = vocab[FIM_PREFIX], vocab[FIM_SUFFIX], vocab[FIM_MIDDLE]
    end = default_tokenizer.eos_token_id
    split = FimSplit("x = ", "compute(1)", "\nprint(x)\n", "after_trigger")

    def encode(text: str) -> list[int]:
        return default_tokenizer.backend_tokenizer.encode(text).ids

    psm = fim_ids(split, encode, layout="psm", prefix_id=p, suffix_id=s, middle_id=m, end_id=end)
    spm = fim_ids(split, encode, layout="spm", prefix_id=p, suffix_id=s, middle_id=m, end_id=end)
    left, right, middle = encode(split.left), encode(split.right), encode(split.middle)
    assert psm == [p, *left, s, *right, m, *middle, end]
    assert spm == [s, *right, p, *left, m, *middle, end]


def test_stream_batches_depend_only_on_seed_and_step(
    default_tokenizer: PreTrainedTokenizerBase,
) -> None:
    files = [SourceFile("stdlib", f"m{i}.py", CODE * (i + 1)) for i in range(4)]
    first = TrainingStream(default_tokenizer, files, seed=3, seq_len=64)
    again = TrainingStream(default_tokenizer, files, seed=3, seq_len=64)
    assert first.batch(5, 2).shape == (2, 65)
    assert first.batch(5, 2).equal(again.batch(5, 2))
    assert not first.batch(5, 2).equal(first.batch(6, 2))


def test_evaluation_packages_never_enter_the_corpus() -> None:
    with pytest.raises(ValueError, match="tqdm"):
        collect_sources(("pip", "tqdm"))
    train, _ = collect_sources()
    origins = {f.origin for f in train}
    assert not origins & set(EVALUATION_PACKAGES)


def test_generated_files_are_recognised() -> None:
    assert is_generated("# This file was automatically generated from modular_x.py.\nimport x\n")
    assert not is_generated(CODE)
