"""A document's cached prompt regions: one KV cache per prompt window the cursor has been in.

A long file shows the model only a window around the cursor. When the cursor goes elsewhere
(a far edit made by hand) and comes back, the window it left is still cached here, so the return
costs the token edits for what changed in it instead of a fresh encode. The windows themselves
live in the document store, which carries them through every text change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cache_engine.completion.prompt_layout import FimLayout, PromptText
from cache_engine.completion.recall import CompletionRecall
from cache_engine.completion.stats import DocumentStats
from cache_engine.kv.editable_cache import EditableCache


@dataclass
class PromptRegion:
    """One cached prompt: the cache and the prompt text it holds.

    With FIM the cache holds the left and right parts in `layout` (see `prompt_layout`);
    `left_tokens` and `right_tokens` say how long each part is.
    """

    id: int
    cache: EditableCache | None = None
    prompt: PromptText | None = None
    layout: FimLayout | None = None  # None: a plain left-context prompt
    left_tokens: int = 0
    right_tokens: int = 0
    last_used: int = 0

    def nbytes(self) -> int:
        return self.cache.nbytes() if self.cache is not None else 0

    def drop_cache(self) -> None:
        if self.cache is not None:
            self.cache.release()
        self.cache = None
        self.prompt = None
        self.left_tokens = self.right_tokens = 0


@dataclass
class DocumentCaches:
    """What the worker keeps for one document: its regions, least recently used first, and
    what was generated at its recent places."""

    stats: DocumentStats = field(default_factory=DocumentStats)
    regions: list[PromptRegion] = field(default_factory=list)
    recall: CompletionRecall = field(default_factory=CompletionRecall)
    next_id: int = 0

    def new_region(self) -> PromptRegion:
        region = PromptRegion(self.next_id)
        self.next_id += 1
        self.regions.append(region)
        self.stats.regions_created += 1
        return region

    def remove(self, region: PromptRegion) -> None:
        region.drop_cache()
        self.regions.remove(region)

    def touch(self, region: PromptRegion, clock: int) -> None:
        region.last_used = clock
        self.regions.remove(region)
        self.regions.append(region)

    @property
    def active(self) -> PromptRegion | None:
        """The region used last."""
        return self.regions[-1] if self.regions else None

    def drop_all(self) -> None:
        for region in self.regions:
            region.drop_cache()
        self.regions.clear()

    def nbytes(self) -> int:
        return sum(region.nbytes() for region in self.regions)

    def record_sizes(self) -> None:
        """Bring the size counters of `stats` up to date with the regions."""
        self.stats.regions = len(self.regions)
        self.stats.tokens_cached = sum(len(r.cache) for r in self.regions if r.cache is not None)
        self.stats.cache_bytes = self.nbytes()
