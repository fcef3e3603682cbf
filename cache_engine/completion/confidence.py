"""How sure the model is of a suggestion: a cut at its first unlikely token, and a gate.

A small model is often right about how a line starts and wrong about how it goes on, and when it
has no idea it still says something. Two rules keep what it is sure of:
- the cut: decoding stops before the first token whose probability is below `min_token_prob`,
  so a suggestion ends where the model starts guessing (a first token below it leaves nothing);
- the gate: a suggestion is shown only when the geometric mean of its first line's token
  probabilities is at least `min_confidence`.

Tokens that only re-create the text token healing backed the prompt up over say nothing about
the suggestion and are left out of both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ConfidenceGate:
    """The thresholds in force (0 turns either off)."""

    min_confidence: float = 0.0
    min_token_prob: float = 0.0


@dataclass
class ConfidenceTracker:
    """Fed each token's log-probability and where its text starts in the suggestion."""

    min_token_prob: float = 0.0
    # (offset in the suggestion where the token's text starts, its log-probability)
    _tokens: list[tuple[int, float]] = field(default_factory=list)

    def admits(self, log_prob: float) -> bool:
        """Whether a token this likely may go into the suggestion."""
        return log_prob >= math.log(self.min_token_prob) if self.min_token_prob > 0 else True

    def record(self, offset: int, log_prob: float) -> None:
        self._tokens.append((offset, log_prob))

    def confidence(self, suggestion: str) -> float | None:
        """Geometric-mean probability of the tokens that start within `suggestion`'s first
        line; None for an empty suggestion."""
        if not suggestion:
            return None
        line_end = suggestion.find("\n")
        end = len(suggestion) if line_end < 0 else max(line_end, 1)
        first_line = [lp for offset, lp in self._tokens if offset < end]
        if not first_line:
            return None
        return math.exp(sum(first_line) / len(first_line))
