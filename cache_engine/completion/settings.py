"""The knobs of the completion engine, checked when they are set."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, get_args

EditStrategy = Literal["pie", "prefix", "full"]
EDIT_STRATEGIES: tuple[str, ...] = get_args(EditStrategy)
# psm: FIM_PREFIX left FIM_SUFFIX right FIM_MIDDLE; spm: FIM_SUFFIX right FIM_PREFIX left
# FIM_MIDDLE, where typing at the cursor only appends to the left part; auto: spm for models
# that declare it (`fim_layouts` in their config), psm otherwise.
FimLayoutSetting = Literal["psm", "spm", "auto"]
FIM_LAYOUTS: tuple[str, ...] = get_args(FimLayoutSetting)
# Where code follows the cursor on its line: offer completions only when that code just
# closes what the cursor is in (brackets, quotes, punctuation), or always.
MidLine = Literal["closing", "always"]
MID_LINE: tuple[str, ...] = get_args(MidLine)
MIB = 2**20
# A confidence setting with this value takes the one calibrated for the model.
MODEL_CALIBRATED = -1.0


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
    fim_layout: FimLayoutSetting = "auto"
    # After each pie edit, recompute this many cached tokens that follow it (0: none).
    refresh_after_edit: int = 0
    # Before decoding, refresh the cache when more than this many tokens are stale; -1 never.
    stale_budget: int = 0
    # ...but recompute at most this many tokens for one request, from the first stale one on:
    # after a far edit the whole suffix is stale, and refreshing it at once would cost what
    # re-encoding does. The rest follows over the next requests and in the idle refresh.
    max_refresh_tokens: int = 512
    # ...and for at most about this long (0: no limit), at the pass rate the cache has measured:
    # a 0.5B model recomputes about 250 tokens a second on two cores, so 512 of them would hold
    # the ghost text back 2 s after every far edit; the shipped model does 512 in about 60 ms.
    max_refresh_ms: int = 100
    # Prompt windows kept per document, so a trip of the cursor elsewhere and back re-encodes
    # only what changed; 1 keeps a single window that follows the cursor.
    max_regions: int = 4
    mid_line: MidLine = "closing"
    # Tokens drafted from the document per decoding pass and verified at once (0: off, and no
    # drafts from the completion made at the same place before either); the output equals plain
    # greedy decoding.
    speculative_tokens: int = 8
    # Back the prompt up over its last token and let the model re-create it (token healing).
    heal_tokens: bool = True
    # Show a suggestion only when the geometric-mean probability of its first line's tokens is
    # at least this (0: always). A gate is calibrated for one model, from the curve of shown
    # rate against right starts (`python -m benchmarks.suggestion_quality --calibrate`): -1
    # takes the model's own (`completion_gate` in its config), or 0 when it declares none.
    min_confidence: float = MODEL_CALIBRATED
    # Cut a suggestion before its first token less likely than this (0: never; -1: the model's).
    min_token_prob: float = MODEL_CALIBRATED
    # Mix what followed the same tokens earlier in the prompt into the model's next-token
    # distribution, this much per matching length (model/document_ngrams.py, whose DEFAULT_WEIGHT
    # this is, written out: the server reads its settings before numpy and torch load; 0: the
    # model alone).
    document_ngram_weight: float = 0.2

    def __post_init__(self) -> None:
        if self.strategy not in EDIT_STRATEGIES:
            raise SettingsError(
                f"strategy {self.strategy!r} is not one of {', '.join(EDIT_STRATEGIES)}"
            )
        _check_int("max_new_tokens", self.max_new_tokens, 1, 2048)
        _check_int("max_prompt_tokens", self.max_prompt_tokens, 32, 1 << 20)
        _check_int("window_margin_lines", self.window_margin_lines, 0, 10_000)
        _check_int("memory_budget_bytes", self.memory_budget_bytes, 0, 1 << 50)
        _check_int("refresh_after_edit", self.refresh_after_edit, 0, 1 << 20)
        _check_int("stale_budget", self.stale_budget, -1, 1 << 20)
        _check_int("max_refresh_tokens", self.max_refresh_tokens, 1, 1 << 20)
        _check_int("max_refresh_ms", self.max_refresh_ms, 0, 3_600_000)
        _check_int("max_regions", self.max_regions, 1, 64)
        _check_int("speculative_tokens", self.speculative_tokens, 0, 64)
        if self.mid_line not in MID_LINE:
            raise SettingsError(f"mid_line {self.mid_line!r} is not one of {', '.join(MID_LINE)}")
        if self.fim_layout not in FIM_LAYOUTS:
            raise SettingsError(
                f"fim_layout {self.fim_layout!r} is not one of {', '.join(FIM_LAYOUTS)}"
            )
        if not isinstance(self.heal_tokens, bool):
            raise SettingsError(f"heal_tokens must be true or false, got {self.heal_tokens!r}")
        _check_probability("min_confidence", self.min_confidence)
        _check_probability("min_token_prob", self.min_token_prob)
        weight = self.document_ngram_weight
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < 1:
            raise SettingsError(f"document_ngram_weight must be a number in [0, 1), got {weight!r}")
        share = self.suffix_share
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 0.9:
            raise SettingsError(f"suffix_share must be a number in [0, 0.9], got {share!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingsError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _check_probability(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(f"{name} must be a number in [0, 1] or -1, got {value!r}")
    if not (0 <= value <= 1 or value == MODEL_CALIBRATED):
        raise SettingsError(f"{name} must be a number in [0, 1] or -1, got {value!r}")
