"""How much of a stale cache to recompute on the way to a completion.

After a pie edit the moved tokens keep keys and values computed in the old context: they are
stale (`EditableCache.exact_tokens`). Recomputing them makes the ghost text equal full
recomputation, at the price of a forward pass over them before the first token is decoded.
The settings bound that pass by a token count and by time, so a large model does not hold the
ghost text back for seconds after a far edit; what is left follows in the next requests and in
the idle refresh (`CompletionEngine.prepare`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cache_engine.completion.settings import CompletionSettings
from cache_engine.kv.editable_cache import EditableCache, EditStats
from cache_engine.kv.token_edits import TokenEdit


def refresh_after_edits(
    cache: EditableCache, edits: Sequence[TokenEdit], tokens: int
) -> list[EditStats]:
    """Recompute the `tokens` cached tokens after each edit of a batch (indices after it):
    the tokens nearest a change carry most of the deviation (CacheBlend, EPIC)."""
    done: list[EditStats] = []
    shift = 0
    for edit in sorted(edits, key=lambda e: e.start):
        shift += edit.delta
        start = edit.end + shift
        stop = min(len(cache), start + tokens)
        if start < stop:
            done.append(cache.refresh(start, stop))
    return done


def tokens_to_refresh(cache: EditableCache, settings: CompletionSettings) -> int:
    """How many stale tokens, from the first one on, to recompute before decoding: none within
    the stale budget, else at most `max_refresh_tokens` and at most what the cache's measured
    pass rate recomputes in `max_refresh_ms`."""
    budget = settings.stale_budget
    # The last token is re-fed before decoding anyway, so it never counts against the budget.
    if budget < 0 or cache.stale_tokens <= max(budget, 1):
        return 0
    limit = min(cache.stale_tokens, settings.max_refresh_tokens)
    if settings.max_refresh_ms > 0:
        affordable = cache.tokens_within(settings.max_refresh_ms / 1000)
        if affordable is not None:
            limit = min(limit, affordable)
    return limit


def refresh_before_decoding(
    cache: EditableCache,
    settings: CompletionSettings,
    should_stop: Callable[[], bool] = lambda: False,
) -> EditStats | None:
    """Recompute the stale tokens `tokens_to_refresh` allows; None when it allows none."""
    tokens = tokens_to_refresh(cache, settings)
    if tokens == 0:
        return None
    start = cache.exact_tokens
    return cache.refresh(start, start + tokens, should_stop=should_stop)
