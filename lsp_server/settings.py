"""Client settings (initializationOptions, workspace/didChangeConfiguration) to server settings.

Clients send camelCase keys, either at the top level or under a "pieLsp" section:

    {"pieLsp": {"strategy": "pie", "debounceMs": 50, "maxNewTokens": 64,
                "maxPromptTokens": 1536, "suffixShare": 0.25, "windowMarginLines": 8,
                "memoryBudgetMb": 256, "fimLayout": "auto", "refreshAfterEdit": 0,
                "staleBudget": 0, "maxRefreshTokens": 512, "maxRefreshMs": 100, "maxRegions": 4,
                "midLine": "closing",
                "speculativeTokens": 8, "healTokens": true, "minConfidence": -1,
                "minTokenProb": -1, "documentNgramWeight": 0.2, "idleRefreshMs": 400}}

Keys left out keep their current value. Unknown keys and bad values reject the whole update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from cache_engine.completion.settings import MIB, CompletionSettings, SettingsError

SECTIONS = ("pieLsp", "pie-lsp", "pie_lsp")

_COMPLETION_KEYS = {
    "strategy": "strategy",
    "maxNewTokens": "max_new_tokens",
    "maxPromptTokens": "max_prompt_tokens",
    "suffixShare": "suffix_share",
    "windowMarginLines": "window_margin_lines",
    "fimLayout": "fim_layout",
    "refreshAfterEdit": "refresh_after_edit",
    "staleBudget": "stale_budget",
    "maxRefreshTokens": "max_refresh_tokens",
    "maxRefreshMs": "max_refresh_ms",
    "maxRegions": "max_regions",
    "midLine": "mid_line",
    "speculativeTokens": "speculative_tokens",
    "healTokens": "heal_tokens",
    "minConfidence": "min_confidence",
    "minTokenProb": "min_token_prob",
    "documentNgramWeight": "document_ngram_weight",
}


@dataclass(frozen=True)
class ServerSettings:
    completion: CompletionSettings = field(default_factory=CompletionSettings)
    debounce_ms: int = 30
    # After this long with no change and no request, the worker syncs the document's cache at
    # the last requested position and refreshes its stale tokens; 0 turns it off.
    idle_refresh_ms: int = 400

    def updated(self, raw: object) -> ServerSettings:
        """These settings with the client's changes applied; raises SettingsError naming the
        bad key or value."""
        if raw is None:
            return self
        if not isinstance(raw, Mapping):
            raise SettingsError(f"settings must be a JSON object, got {raw!r}")
        section = next((raw[name] for name in SECTIONS if name in raw), raw)
        if section is None:
            return self
        if not isinstance(section, Mapping):
            raise SettingsError(f"settings section must be a JSON object, got {section!r}")
        changes: dict[str, object] = {}
        debounce_ms, idle_refresh_ms = self.debounce_ms, self.idle_refresh_ms
        for key, value in section.items():
            if key in _COMPLETION_KEYS:
                changes[_COMPLETION_KEYS[key]] = value
            elif key == "memoryBudgetMb":
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise SettingsError(f"memoryBudgetMb must be a number >= 0, got {value!r}")
                changes["memory_budget_bytes"] = int(value * MIB)
            elif key == "debounceMs":
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 5000:
                    raise SettingsError(
                        f"debounceMs must be an integer in [0, 5000], got {value!r}"
                    )
                debounce_ms = value
            elif key == "idleRefreshMs":
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int)
                    or not 0 <= value <= 60_000
                ):
                    raise SettingsError(
                        f"idleRefreshMs must be an integer in [0, 60000], got {value!r}"
                    )
                idle_refresh_ms = value
            else:
                known = ", ".join(
                    [*_COMPLETION_KEYS, "memoryBudgetMb", "debounceMs", "idleRefreshMs"]
                )
                raise SettingsError(f"unknown setting {key!r}; known settings: {known}")
        return ServerSettings(replace(self.completion, **changes), debounce_ms, idle_refresh_ms)

    def client_names(self) -> dict[str, object]:
        """Every setting under the camelCase name a client sends."""
        values: dict[str, object] = {
            client: getattr(self.completion, name) for client, name in _COMPLETION_KEYS.items()
        }
        values["memoryBudgetMb"] = self.completion.memory_budget_bytes / MIB
        values["debounceMs"] = self.debounce_ms
        values["idleRefreshMs"] = self.idle_refresh_ms
        return values
