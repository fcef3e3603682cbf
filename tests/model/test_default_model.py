"""The shipped default model: loads offline, completes held-out code into code that parses."""

from __future__ import annotations

import ast
import random

import pytest

from cache_engine.kv.editable_cache import EditableCache
from cache_engine.model.corpus import collect_sources
from cache_engine.model.loading import DEFAULT_MODEL_DIR, load_model

pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "model.safetensors").exists(),
    reason=f"the default model has not been trained into {DEFAULT_MODEL_DIR}",
)


@pytest.fixture(scope="module")
def loaded():
    return load_model("default")


def test_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("default")
    assert model.model.config.model_type == "llama"
    assert model.model.config.num_key_value_heads < model.model.config.num_attention_heads
    size = (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size
    assert size <= 40 * 2**20


def test_fim_tokens_round_trip(loaded):
    fim = loaded.fim
    assert fim is not None
    for token in (fim.prefix, fim.suffix, fim.middle, loaded.tokenizer.eos_token):
        ids = loaded.tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, token
        assert loaded.tokenizer.decode(ids) == token
    text = "def f(x):\n    return x\n"
    prompt = f"{fim.prefix}{text[:10]}{fim.suffix}{text[20:]}{fim.middle}"
    ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert loaded.tokenizer.decode(ids) == prompt


def _parses_with_completion(prefix: str, line: str, indent: str) -> bool:
    """Does prefix + line parse, allowing the line to open a block (then a `pass` closes it)?"""
    for tail in ("\n", f"\n{indent}    pass\n", f"\n{indent}        pass\n"):
        try:
            ast.parse(prefix + line + tail)
            return True
        except SyntaxError:
            continue
    return False


def _statement_boundaries(text: str) -> list[int]:
    """Line indices at which the text before them ends a whole top-level function body."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    cuts = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and len(node.body) >= 2:
            second = node.body[1]
            if second.lineno == second.end_lineno and lines[second.lineno - 1].strip():
                cuts.append(second.lineno - 1)
    return cuts


def test_completes_held_out_code_into_parsable_lines(loaded):
    _, held_out = collect_sources()
    rng = random.Random(0)
    cases = []
    for source in held_out:
        for cut in _statement_boundaries(source.text):
            cases.append((source.text, cut))
    cases = rng.sample(cases, 12)
    cache = EditableCache(loaded.model, strategy="full")
    parsed = 0
    for text, cut in cases:
        lines = text.splitlines(keepends=True)
        # Context: the module's top part plus the function up to the cut, so the prefix parses.
        start = cut
        while start > 0 and not lines[start].startswith("def "):
            start -= 1
        prefix = "".join(lines[start:cut])
        indent = lines[cut][: len(lines[cut]) - len(lines[cut].lstrip())]
        ids = loaded.tokenizer("".join(lines[:cut])[-3000:], add_special_tokens=False)["input_ids"]
        cache.reset(ids[-700:])
        pieces: list[int] = []

        def until_newline(token: int, log_prob: float, pieces: list[int] = pieces) -> bool:
            if token in loaded.eos_token_ids:
                return False
            pieces.append(token)
            return "\n" not in loaded.tokenizer.decode(pieces)

        cache.generate(48, until_newline)
        line = loaded.tokenizer.decode(pieces).split("\n")[0]
        parsed += _parses_with_completion(prefix, line, indent)
    # A 6-layer model writes plausible Python most of the time, not always.
    assert parsed >= 9, f"only {parsed} of {len(cases)} completions parse in context"
