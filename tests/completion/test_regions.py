"""Cached regions, refresh policies and the SPM layout, through the completion engine."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cache_engine.completion.engine import CompletionEngine
from cache_engine.completion.settings import CompletionSettings, SettingsError
from cache_engine.kv.editable_cache import EditableCache
from cache_engine.text.text_change import TextChange
from tests.completion.test_completion_engine import SOURCE, URI, cached_prompt_is_consistent

# No time limit on refreshes: the tests that ask for an exact cache must not depend on the
# machine's speed (`test_refresh_time_limit_*` set the pass rate themselves).
SETTINGS = CompletionSettings(
    max_new_tokens=4,
    max_prompt_tokens=256,
    window_margin_lines=3,
    mid_line="always",
    max_refresh_ms=0,
)


def engine_with(loaded, **changes: object) -> CompletionEngine:
    return CompletionEngine(loaded, replace(SETTINGS, **changes))


def logits_gap(engine: CompletionEngine, uri: str = URI) -> float:
    region = engine.active_region(uri)
    assert region is not None and region.cache is not None
    fresh = EditableCache(engine.loaded.model, strategy="full")
    fresh.reset(region.cache.token_ids)
    with torch.no_grad():
        return float((region.cache.next_token_logits() - fresh.next_token_logits()).abs().max())


def far_trip(engine: CompletionEngine) -> tuple[int, dict[str, object]]:
    """Complete near the bottom, type a comment near the top with a completion after every
    keystroke, come back; returns (cursor back at the bottom, stats of the return)."""
    engine.open_document(URI, SOURCE, 1, "python")
    bottom = SOURCE.index("helper_35(")
    engine.complete(URI, bottom)
    top = SOURCE.index("def area")
    version = 1
    for char in "# a note\n":
        version += 1
        engine.change_document(URI, version, [TextChange(top, top, char)])
        top += 1
        bottom += 1
        engine.complete(URI, top)
    engine.complete(URI, bottom)
    return bottom, engine.stats(URI)[URI]


def test_a_trip_to_the_top_and_back_reencodes_almost_nothing(loaded_random_model) -> None:
    engine = engine_with(loaded_random_model)
    _, stats = far_trip(engine)
    assert stats["regions"] == 2
    assert stats["region_returns"] == 1
    region = engine.active_region(URI)
    assert stats["last_edit"]["tokens_encoded"] <= 0.1 * len(region.cache)
    assert cached_prompt_is_consistent(engine)


def test_one_region_reencodes_on_return(loaded_random_model) -> None:
    """The oracle: without regions the return re-encodes most of the prompt."""
    engine = engine_with(loaded_random_model, max_regions=1)
    _, stats = far_trip(engine)
    assert stats["regions"] == 1
    assert stats["last_edit"]["tokens_encoded"] > 0.5 * len(engine.active_region(URI).cache)


def test_regions_stay_within_the_memory_budget(loaded_random_model) -> None:
    probe = engine_with(loaded_random_model)
    probe.open_document(URI, SOURCE, 1, "python")
    probe.complete(URI, SOURCE.index("helper_2("))
    one_region = probe.stats(URI)[URI]["cache_bytes"]
    budget = int(2.5 * one_region)
    engine = engine_with(loaded_random_model, memory_budget_bytes=budget)
    engine.open_document(URI, SOURCE, 1, "python")
    for name in ("helper_2(", "helper_14(", "helper_26(", "helper_38("):
        engine.complete(URI, SOURCE.index(name))
    stats = engine.stats(URI)[URI]
    assert stats["cache_bytes"] <= budget
    assert stats["regions"] == 2
    assert stats["evictions"] >= 1
    # An evicted region is encoded again, correctly, when the cursor comes back.
    engine.complete(URI, SOURCE.index("helper_2("))
    assert cached_prompt_is_consistent(engine)


def test_max_regions_drops_the_least_recently_used(loaded_random_model) -> None:
    engine = engine_with(loaded_random_model, max_regions=2)
    engine.open_document(URI, SOURCE, 1, "python")
    for name in ("helper_2(", "helper_20(", "helper_38("):
        engine.complete(URI, SOURCE.index(name))
    assert engine.stats(URI)[URI]["regions"] == 2
    windows = engine.documents.snapshot(URI).windows
    assert len(windows) == 2
    assert all(w.start > SOURCE.index("helper_2(") for w in windows.values())


def test_stale_budget_zero_decodes_from_an_exact_cache(loaded_random_model) -> None:
    engine = engine_with(loaded_random_model, stale_budget=0)
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    value = x + 20")
    engine.complete(URI, cursor)
    for version, char in enumerate("abc", start=2):
        engine.change_document(URI, version, [TextChange(cursor, cursor, char)])
        cursor += 1
        engine.complete(URI, cursor)
        assert engine.active_region(URI).cache.stale_tokens == 0
        assert logits_gap(engine) <= 1e-4
    assert engine.stats(URI)[URI]["tokens_refreshed_total"] > 0


def test_without_refresh_typing_leaves_the_right_context_stale(loaded_random_model) -> None:
    engine = engine_with(loaded_random_model, stale_budget=-1, fim_layout="psm")
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    value = x + 20")
    engine.complete(URI, cursor)
    engine.change_document(URI, 2, [TextChange(cursor, cursor, "a")])
    engine.complete(URI, cursor + 1)
    region = engine.active_region(URI)
    assert region.cache.stale_tokens >= region.right_tokens
    assert logits_gap(engine) > 1e-3


def test_idle_prepare_makes_the_cache_exact(loaded_random_model) -> None:
    engine = engine_with(loaded_random_model, stale_budget=-1, fim_layout="psm")
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    value = x + 20")
    engine.complete(URI, cursor)
    engine.change_document(URI, 2, [TextChange(0, 0, "# top\n")])
    engine.change_document(URI, 3, [TextChange(cursor + 6, cursor + 6, "ab")])
    assert engine.prepare(URI, cursor + 8)
    assert engine.stats(URI)[URI]["stale_tokens"] == 0
    assert logits_gap(engine) <= 1e-4


def test_a_stopped_prepare_leaves_a_consistent_cache(loaded_random_model) -> None:
    engine = engine_with(loaded_random_model, stale_budget=-1, fim_layout="psm")
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    value = x + 20")
    engine.complete(URI, cursor)
    engine.change_document(URI, 2, [TextChange(cursor, cursor, "a")])
    assert not engine.prepare(URI, cursor + 1, should_stop=lambda: True)
    assert cached_prompt_is_consistent(engine)
    assert engine.active_region(URI).cache.stale_tokens > 0
    engine.complete(URI, cursor + 1)
    assert cached_prompt_is_consistent(engine)


def test_refresh_after_edit_recomputes_the_tokens_after_it(loaded_random_model) -> None:
    engine = engine_with(loaded_random_model, stale_budget=-1, refresh_after_edit=8)
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    value = x + 20")
    engine.complete(URI, cursor)
    engine.change_document(URI, 2, [TextChange(cursor, cursor, "a")])
    engine.complete(URI, cursor + 1)
    stats = engine.stats(URI)[URI]
    assert stats["tokens_refreshed_total"] >= 8
    region = engine.active_region(URI)
    assert region.cache.stale_tokens <= region.right_tokens + 2 - 8


def test_spm_keeps_typing_exact_without_refresh(loaded_random_model) -> None:
    engine = engine_with(loaded_random_model, stale_budget=-1, fim_layout="spm")
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    value = x + 20")
    engine.complete(URI, cursor)
    region = engine.active_region(URI)
    assert region.layout == "spm"
    suffix, prefix = engine._markers.suffix, engine._markers.prefix
    assert region.cache.token_ids[0] == suffix
    assert region.cache.token_ids[1 + region.right_tokens] == prefix
    for version, char in enumerate("abcd", start=2):
        engine.change_document(URI, version, [TextChange(cursor, cursor, char)])
        cursor += 1
        engine.complete(URI, cursor)
        assert cached_prompt_is_consistent(engine)
        assert logits_gap(engine) <= 1e-4
        assert engine.stats(URI)[URI]["tokens_refreshed_total"] == 0


def test_fim_layout_auto_follows_the_model(loaded_random_model) -> None:
    engine = engine_with(loaded_random_model)
    assert engine.fim_layout() == "psm"
    engine.model_fim_layouts = ("psm", "spm")
    assert engine.fim_layout() == "spm"
    assert engine.fim_layout(replace(SETTINGS, fim_layout="psm")) == "psm"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("fim_layout", "pms"),
        ("stale_budget", -2),
        ("max_regions", 0),
        ("refresh_after_edit", -1),
        ("max_refresh_ms", -1),
        ("max_refresh_ms", 1.5),
    ],
)
def test_bad_new_settings_name_the_value(name: str, value: object) -> None:
    with pytest.raises(SettingsError, match=name):
        replace(SETTINGS, **{name: value})


def test_refresh_per_request_is_capped_and_catches_up(loaded_random_model) -> None:
    engine = engine_with(loaded_random_model, stale_budget=0, max_refresh_tokens=40)
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    value = x + 20")
    engine.complete(URI, cursor)
    window = engine.documents.snapshot(URI).windows[engine.active_region(URI).id]
    far = window.start + 1  # inside the window, far above the cursor
    engine.change_document(URI, 2, [TextChange(far, far, "# far\n")])
    cursor += len("# far\n")
    engine.complete(URI, cursor)
    cache = engine.active_region(URI).cache
    exact_after_one = cache.exact_tokens
    assert 0 < cache.stale_tokens and engine.stats(URI)[URI]["last_refresh_seconds"] is not None
    for _ in range(20):
        if cache.stale_tokens <= 1:
            break
        before = cache.exact_tokens
        engine.complete(URI, cursor)  # a new request at the same place: 40 more tokens
        assert cache.exact_tokens == min(len(cache), before + 40)
    assert cache.stale_tokens <= 1 and cache.exact_tokens > exact_after_one
    assert logits_gap(engine) <= 1e-4


def far_edit_then_complete(engine: CompletionEngine) -> EditableCache:
    """Complete, insert a line far above the cursor inside the window, complete again; returns
    the region's cache."""
    engine.open_document(URI, SOURCE, 1, "python")
    cursor = SOURCE.index("    value = x + 20") + len("    value = x + 20")
    engine.complete(URI, cursor)
    window = engine.documents.snapshot(URI).windows[engine.active_region(URI).id]
    far = window.start + 1
    engine.change_document(URI, 2, [TextChange(far, far, "# far\n")])
    engine.complete(URI, cursor + len("# far\n"))
    return engine.active_region(URI).cache


@pytest.mark.parametrize(("affordable", "refreshed"), [(25, 25), (0, 0), (10_000, 40)])
def test_refresh_time_limit_takes_what_the_pass_rate_affords(
    loaded_random_model, monkeypatch, affordable: int, refreshed: int
) -> None:
    asked: list[float] = []

    def tokens_within(self: EditableCache, seconds: float) -> int:
        asked.append(seconds)
        return affordable

    monkeypatch.setattr(EditableCache, "tokens_within", tokens_within)
    engine = engine_with(loaded_random_model, max_refresh_tokens=40, max_refresh_ms=250)
    cache = far_edit_then_complete(engine)
    assert asked and set(asked) == {0.25}
    assert engine.stats(URI)[URI]["tokens_refreshed_total"] == refreshed
    assert cache.stale_tokens > 1


def test_no_time_limit_refreshes_the_token_cap(loaded_random_model, monkeypatch) -> None:
    def unreachable(self: EditableCache, seconds: float) -> int:
        raise AssertionError("maxRefreshMs 0 must not consult the pass rate")

    monkeypatch.setattr(EditableCache, "tokens_within", unreachable)
    engine = engine_with(loaded_random_model, max_refresh_tokens=40, max_refresh_ms=0)
    far_edit_then_complete(engine)
    assert engine.stats(URI)[URI]["tokens_refreshed_total"] == 40
