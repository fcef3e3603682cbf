"""Staleness tracking and in-place refresh of the editable cache, against full recomputation."""

from __future__ import annotations

import random

import pytest
import torch

from cache_engine.kv import editable_cache
from cache_engine.kv.editable_cache import RATE_MIN_TOKENS, EditableCache
from cache_engine.kv.token_edits import TokenEdit
from tests.kv.test_editable_cache import ATOL, fresh, random_batch, random_ids
from tests.model_factory import tiny_model


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def pie_cache(model, ids: list[int]) -> EditableCache:
    cache = EditableCache(model, strategy="pie")
    cache.reset(ids)
    return cache


def logits_gap(cache: EditableCache) -> float:
    reference = fresh(cache.model, cache.token_ids)
    return float((cache.next_token_logits() - reference.next_token_logits()).abs().max())


def keys_gap(cache: EditableCache, start: int = 0) -> float:
    reference = fresh(cache.model, cache.token_ids)
    gap = 0.0
    for layer in range(cache.spec.num_layers):
        keys, values = cache.layer_kv(layer)
        ref_keys, ref_values = reference.layer_kv(layer)
        gap = max(
            gap,
            float((keys[:, start:] - ref_keys[:, start:]).abs().max()),
            float((values[:, start:] - ref_values[:, start:]).abs().max()),
        )
    return gap


def test_a_far_pie_edit_makes_the_moved_suffix_stale(llama):
    cache = pie_cache(llama, random_ids(60, 1))
    assert cache.stale_tokens == 0
    cache.insert(10, [5, 6, 7])
    assert cache.exact_tokens == 13
    assert cache.stale_tokens == 50
    assert cache.stale_mask().tolist() == [False] * 13 + [True] * 50
    # An edit at the end leaves the stale run where it is; one before it moves the boundary.
    cache.insert(len(cache), [9])
    assert cache.exact_tokens == 13
    cache.delete(2, 4)
    assert cache.exact_tokens == 2


def test_edits_at_the_end_keep_the_cache_exact(llama):
    cache = pie_cache(llama, random_ids(40, 2))
    cache.replace(38, 40, [1, 2, 3])
    cache.append([4, 5])
    cache.delete(41, 43)
    assert cache.stale_tokens == 0
    assert logits_gap(cache) <= ATOL


@pytest.mark.parametrize("strategy", ["full", "prefix"])
def test_exact_strategies_stay_exact_after_a_clean_cache(llama, strategy):
    cache = pie_cache(llama, random_ids(40, 3))
    cache.insert(5, [1, 2], strategy=strategy)
    assert cache.stale_tokens == 0


def test_prefix_after_pie_is_stale_from_the_first_stale_token(llama):
    cache = pie_cache(llama, random_ids(40, 4))
    cache.insert(5, [1, 2])
    cache.insert(30, [3], strategy="prefix")
    # prefix re-encoded from 30 on, but attending to the stale 7..29.
    assert cache.exact_tokens == 7


def test_refresh_from_the_first_stale_token_is_exact(llama):
    rng = random.Random(5)
    cache = pie_cache(llama, random_ids(80, 5))
    for _ in range(6):
        cache.apply_edits(random_batch(rng, len(cache)))
    assert cache.stale_tokens > 0
    assert logits_gap(cache) > 10 * ATOL  # the oracle can fail
    stats = cache.refresh_stale(chunk=7)
    assert cache.stale_tokens == 0
    assert stats.tokens_refreshed > 0
    assert logits_gap(cache) <= ATOL
    assert keys_gap(cache) <= ATOL


def test_refresh_of_the_first_r_tokens_moves_the_boundary(llama):
    cache = pie_cache(llama, random_ids(60, 6))
    cache.insert(10, [1, 2, 3])
    cache.refresh(13, 21)
    assert cache.exact_tokens == 21
    assert keys_gap(cache, 0) > ATOL  # 21.. are still stale
    reference = fresh(llama, cache.token_ids)
    for layer in range(cache.spec.num_layers):
        keys, _ = cache.layer_kv(layer)
        ref_keys, _ = reference.layer_kv(layer)
        assert float((keys[:, :21] - ref_keys[:, :21]).abs().max()) <= ATOL
    # A run refreshed past a stale token attends to it, so it stays stale.
    cache.refresh(40, 50)
    assert cache.exact_tokens == 21


def test_a_stopped_refresh_leaves_a_consistent_cache(llama):
    cache = pie_cache(llama, random_ids(90, 7))
    cache.insert(3, [1, 2])
    ids = cache.token_ids
    calls = {"n": 0}

    def stop_after_two_chunks() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    stats = cache.refresh_stale(chunk=10, should_stop=stop_after_two_chunks)
    assert stats.tokens_refreshed == 20
    assert cache.token_ids == ids
    assert cache.exact_tokens == 25
    # It can be finished later, and then it is exact.
    cache.refresh_stale(chunk=10)
    assert cache.stale_tokens == 0
    assert logits_gap(cache) <= ATOL


def test_refresh_rejects_bad_ranges_and_changes_nothing(llama):
    cache = pie_cache(llama, random_ids(20, 8))
    cache.insert(2, [1])
    before = (cache.token_ids, cache.exact_tokens, cache.layer_kv(0)[0].clone())
    for start, end in ((-1, 5), (5, 3), (0, 22)):
        with pytest.raises(ValueError, match="refresh range"):
            cache.refresh(start, end)
    with pytest.raises(ValueError, match="chunk"):
        cache.refresh(0, 5, chunk=0)
    assert cache.token_ids == before[0]
    assert cache.exact_tokens == before[1]
    assert torch.equal(cache.layer_kv(0)[0], before[2])


def test_pie_equals_full_exactly_when_nothing_is_stale(llama):
    rng = random.Random(9)
    cache = pie_cache(llama, random_ids(50, 9))
    checked = 0
    for step in range(40):
        if rng.random() < 0.5:
            cache.apply_edits(random_batch(rng, len(cache)))
        else:
            n = len(cache)
            cache.apply_edits([TokenEdit(n - 2, n, (rng.randrange(160),))])
        if step % 5 == 4:
            cache.refresh_stale()
        if cache.stale_tokens == 0:
            assert logits_gap(cache) <= ATOL
            checked += 1
    assert checked >= 8


def test_pass_rate_comes_from_long_passes_only(llama) -> None:
    cache = EditableCache(llama, strategy="pie")
    assert cache.tokens_within(1.0) is None
    cache.reset(random_ids(RATE_MIN_TOKENS - 1, seed=3))
    cache.append(random_ids(4, seed=4))
    assert cache.tokens_within(1.0) is None, "short passes cost mostly overhead"
    cache.append(random_ids(RATE_MIN_TOKENS, seed=5))
    rate_set = cache.tokens_within(3600.0)
    # A long pass of a tiny model takes far less than an hour a token.
    assert rate_set is not None and rate_set >= RATE_MIN_TOKENS
    cache.append(random_ids(RATE_MIN_TOKENS - 1, seed=6))
    cache.refresh(0, RATE_MIN_TOKENS - 1)
    assert cache.tokens_within(3600.0) == rate_set, "a short pass moved the rate"


def test_pass_rate_moves_halfway_to_each_long_pass(llama, monkeypatch) -> None:
    seconds_per_call = [1e-3]

    class ScriptedClock:
        """perf_counter that advances by seconds_per_call[0] on every call, so a pass takes
        that many seconds per clock reading inside it, whatever the machine."""

        now = 0.0

        @classmethod
        def perf_counter(cls) -> float:
            cls.now += seconds_per_call[0]
            return cls.now

    monkeypatch.setattr(editable_cache, "time", ScriptedClock)
    cache = EditableCache(llama, strategy="pie")
    tokens = RATE_MIN_TOKENS * 2
    cache.reset(random_ids(tokens, seed=7))
    first = cache.tokens_within(1.0)
    assert first is not None and first > 0
    # Passes ten times slower: the rate moves halfway each time, toward the slower one.
    seconds_per_call[0] = 1e-2
    cache.append(random_ids(tokens, seed=8))
    second = cache.tokens_within(1.0)
    cache.append(random_ids(tokens, seed=9))
    third = cache.tokens_within(1.0)
    assert second is not None and third is not None
    assert first > second > third > first / 10
