"""Client settings parsing."""

from __future__ import annotations

import pytest

from cache_engine.completion.settings import MIB, SettingsError
from lsp_server.settings import ServerSettings


def test_section_and_partial_update() -> None:
    settings = ServerSettings().updated({"pieLsp": {"strategy": "prefix", "debounceMs": 5}})
    assert settings.completion.strategy == "prefix" and settings.debounce_ms == 5
    again = settings.updated({"maxNewTokens": 9, "memoryBudgetMb": 1.5})
    assert again.completion.strategy == "prefix"
    assert again.completion.max_new_tokens == 9
    assert again.completion.memory_budget_bytes == int(1.5 * MIB)
    mixed = again.updated({"pieLsp": {"documentNgramWeight": 0}})
    assert mixed.completion.document_ngram_weight == 0
    assert mixed.completion.max_new_tokens == 9


def test_nothing_to_change() -> None:
    settings = ServerSettings()
    assert settings.updated(None) is settings
    assert settings.updated({"pieLsp": None}) is settings


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"strategy": "conflict"}, "strategy 'conflict'"),
        ({"maxNewTokens": True}, "max_new_tokens must be an integer"),
        ({"suffixShare": 2}, "suffix_share"),
        (
            {"documentNgramWeight": 1.2},
            "document_ngram_weight must be a number in \\[0, 1\\), got 1.2",
        ),
        ({"debounceMs": -1}, "debounceMs"),
        ({"memoryBudgetMb": "big"}, "memoryBudgetMb"),
        ({"maxTokens": 3}, "unknown setting 'maxTokens'"),
        ("pie", "must be a JSON object"),
    ],
)
def test_bad_settings_name_the_value(raw: object, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        ServerSettings().updated(raw)
