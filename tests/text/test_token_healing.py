"""Token healing: where the prompt is backed up to, and the tokens allowed to re-create it."""

from __future__ import annotations

import pytest

from cache_engine.text.token_healing import TokenHealer
from tests.text.tokenizers import incremental_tokenizer

TOKENIZERS = ["default", "qwen_style", "sentencepiece_style"]
LEFTS = [
    "def f(x):\n    y = 1\n    ",
    "def f(x):\n    return foo.ap",
    "a = 1\nb = sorted(",
    "import os\nimport o",
    "x = 1\ny = 2\n",
    "class A:\n    def run(self):\n        self.",
]


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("left", LEFTS)
def test_split_backs_up_over_the_last_token_of_the_left_context(name: str, left: str):
    tokenizer = incremental_tokenizer(name)
    healing = TokenHealer(tokenizer).split(left)
    assert healing.kept + healing.healed == left
    assert healing.healed, "every one of these ends in a token a longer one could span"
    # The healed text is the last token of the left context as it tokenizes in context.
    ids = tokenizer.encode(left)
    last = tokenizer.token_bytes()[ids[-1]].decode()
    assert healing.healed == last


@pytest.mark.parametrize("name", TOKENIZERS)
def test_nothing_is_healed_when_the_left_context_is_one_token(name: str):
    healer = TokenHealer(incremental_tokenizer(name))
    assert healer.split("x").healed == ""
    assert healer.split("").healed == ""


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("healed", ["    ", "ap", "(", " o", "\n        ", "self."])
def test_allowed_tokens_agree_with_the_healed_text(name: str, healed: str):
    tokenizer = incremental_tokenizer(name)
    healer = TokenHealer(tokenizer)
    table = tokenizer.token_bytes()
    data = healed.encode()
    allowed = set(healer.allowed(data).tolist())
    expected = {i for i, b in enumerate(table) if b and (b.startswith(data) or data.startswith(b))}
    assert allowed == expected
    assert allowed, "some token must spell the start of any text"


@pytest.mark.parametrize("name", TOKENIZERS)
def test_the_constraint_lets_go_once_the_healed_text_is_spelled(name: str):
    tokenizer = incremental_tokenizer(name)
    healer = TokenHealer(tokenizer)
    healed = "    re"
    constraint = healer.constraint(healed)
    assert constraint is not None
    table = tokenizer.token_bytes()
    generated: list[int] = []
    produced = b""
    while (allowed := constraint(generated)) is not None:
        # Take the shortest allowed token, the slowest way to spell it out.
        token = min(allowed.tolist(), key=lambda i: len(table[i]))
        generated.append(token)
        produced += table[token]
    assert produced.startswith(healed.encode())
    assert len(generated) >= 1
    assert healer.constraint("") is None
