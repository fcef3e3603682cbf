"""Client settings (initializationOptions, workspace/didChangeConfiguration) to server settings.

Clients send camelCase keys, either at the top level or under a "pieLsp" section:

    {"pieLsp": {"strategy": "pie", "debounceMs": 50, "maxNewTokens": 64,
                "maxPromptTokens": 1536, "suffixShare": 0.25, "windowMarginLines": 8,
                "memoryBudgetMb": 256}}

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
}


@dataclass(frozen=True)
class ServerSettings:
    completion: CompletionSettings = field(default_factory=CompletionSettings)
    debounce_ms: int = 30

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
        debounce_ms = self.debounce_ms
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
            else:
                known = ", ".join([*_COMPLETION_KEYS, "memoryBudgetMb", "debounceMs"])
                raise SettingsError(f"unknown setting {key!r}; known settings: {known}")
        return ServerSettings(replace(self.completion, **changes), debounce_ms)
