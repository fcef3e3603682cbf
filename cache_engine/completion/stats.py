"""Per-document counters that the engine reports (`pie-lsp.stats`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cache_engine.kv.editable_cache import EditStats


@dataclass
class DocumentStats:
    tokens_cached: int = 0
    cache_bytes: int = 0
    last_edit: EditStats | None = None
    tokens_encoded_total: int = 0
    tokens_reused_total: int = 0
    cache_syncs: int = 0
    completions: int = 0
    last_completion_seconds: float | None = None
    last_completion_tokens: int = 0
    forward_typing_hits: int = 0
    evictions: int = 0
    regions: int = 0
    regions_created: int = 0
    region_returns: int = 0  # completions served by a region the cursor had left
    stale_tokens: int = 0  # in the region used last, after its last completion
    exact_tokens: int = 0
    refreshes: int = 0
    tokens_refreshed_total: int = 0
    last_refresh_seconds: float | None = None
    speculative_drafted_total: int = 0
    speculative_accepted_total: int = 0
    recalled_drafts: int = 0  # completions that drafted from one made at the same place before
    # Tokens the document's n-grams chose where the model alone would have taken another (a
    # choice made for the row after a verify pass's last kept draft counts even when decoding
    # stops before that token).
    ngram_chosen_tokens: int = 0
    below_confidence_gate: int = 0  # suggestions the confidence gate did not show

    def record_edit(self, stats: EditStats) -> None:
        self.last_edit = stats
        self.tokens_encoded_total += stats.tokens_encoded
        self.tokens_reused_total += stats.tokens_reused
        self.cache_syncs += 1

    def record_refresh(self, stats: EditStats) -> None:
        if stats.tokens_refreshed:
            self.refreshes += 1
            self.tokens_refreshed_total += stats.tokens_refreshed
            self.last_refresh_seconds = stats.seconds

    def as_dict(self) -> dict[str, object]:
        result = asdict(self)
        result["last_edit_strategy"] = self.last_edit.strategy if self.last_edit else None
        return result
