"""The knobs of the completion engine, checked when they are set."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, get_args

EditStrategy = Literal["pie", "prefix", "full"]
EDIT_STRATEGIES: tuple[str, ...] = get_args(EditStrategy)
MIB = 2**20


class SettingsError(ValueError):
    """A setting has a bad value; the message names the setting and the value."""


@dataclass(frozen=True)
class CompletionSettings:
    strategy: EditStrategy = "pie"
    max_new_tokens: int = 64
    max_prompt_tokens: int = 1536
    # Share of the prompt budget spent on the text after the cursor (FIM models only).
    suffix_share: float = 0.25
    # The context window moves once the cursor comes this many lines from one of its edges.
    window_margin_lines: int = 8
    # All documents' KV caches together; least recently used ones are dropped beyond it.
    memory_budget_bytes: int = 256 * MIB

    def __post_init__(self) -> None:
        if self.strategy not in EDIT_STRATEGIES:
            raise SettingsError(
                f"strategy {self.strategy!r} is not one of {', '.join(EDIT_STRATEGIES)}"
            )
        _check_int("max_new_tokens", self.max_new_tokens, 1, 2048)
        _check_int("max_prompt_tokens", self.max_prompt_tokens, 32, 1 << 20)
        _check_int("window_margin_lines", self.window_margin_lines, 0, 10_000)
        _check_int("memory_budget_bytes", self.memory_budget_bytes, 0, 1 << 50)
        share = self.suffix_share
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 0.9:
            raise SettingsError(f"suffix_share must be a number in [0, 0.9], got {share!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingsError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
