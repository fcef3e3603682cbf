"""Invariants of the editable cache, each against full recomputation on random-weight models.

Tolerances (fp32): logits and keys that should be identical up to floating-point reordering are
compared at atol 1e-4. Keys re-rotated by R(Δ) differ from a fresh rotation at R(p+Δ) by the
fp32 rounding of the angle, about p·2⁻²⁴ radians, so the same tolerance holds up to 4k positions.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import DynamicCache

from cache_engine.kv.editable_cache import STRATEGIES, EditableCache
from cache_engine.kv.rotary import UnsupportedModelError
from cache_engine.kv.token_edits import TokenEdit, apply_to_ids
from tests.model_factory import tiny_model

ATOL = 1e-4


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def random_ids(n: int, seed: int, vocab: int = 160) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(vocab) for _ in range(n)]


def fresh(model, ids: list[int]) -> EditableCache:
    cache = EditableCache(model, strategy="full")
    cache.reset(ids)
    return cache


def random_batch(rng: random.Random, length: int, max_edits: int = 3) -> list[TokenEdit]:
    cuts = sorted(rng.sample(range(length + 1), min(length + 1, 2 * rng.randint(1, max_edits))))
    edits = []
    for start, end in zip(cuts[::2], cuts[1::2]):
        end = min(end, start + rng.randint(0, 6))
        new = [rng.randrange(160) for _ in range(rng.randint(0, 5))]
        if start == end and not new:
            new = [rng.randrange(160)]
        edits.append(TokenEdit(start, end, tuple(new)))
    return edits


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ids_follow_any_edit_sequence(llama, strategy):
    rng = random.Random(1)
    ids = random_ids(40, 1)
    cache = EditableCache(llama, strategy=strategy, initial_capacity=16)
    cache.reset(ids)
    for _ in range(25):
        batch = random_batch(rng, len(ids))
        ids = apply_to_ids(ids, batch)
        cache.apply_edits(batch)
        assert cache.token_ids == ids
        if strategy != "conflict":
            assert torch.equal(cache.positions, torch.arange(len(ids)))


def test_conflict_breaks_positions(llama):
    cache = EditableCache(llama, strategy="conflict")
    cache.reset(random_ids(30, 2))
    cache.insert(5, [1, 2, 3])
    assert not torch.equal(cache.positions, torch.arange(33))


def test_prefix_matches_full(llama):
    rng = random.Random(3)
    ids = random_ids(60, 3)
    cache = EditableCache(llama, strategy="prefix")
    cache.reset(ids)
    for _ in range(10):
        batch = random_batch(rng, len(ids))
        ids = apply_to_ids(ids, batch)
        cache.apply_edits(batch)
        reference = fresh(llama, ids)
        torch.testing.assert_close(
            cache.next_token_logits(), reference.next_token_logits(), atol=ATOL, rtol=0
        )
        for layer in range(llama.config.num_hidden_layers):
            for got, want in zip(cache.layer_kv(layer), reference.layer_kv(layer)):
                torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "model_type,overrides",
    [
        ("llama", {}),
        (
            "llama",
            {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}},
        ),
        (
            "llama",
            {
                "rope_parameters": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 256,
                    "rope_theta": 500000.0,
                }
            },
        ),
        (
            "llama",
            {
                "rope_parameters": {
                    "rope_type": "yarn",
                    "factor": 4.0,
                    "original_max_position_embeddings": 256,
                    "rope_theta": 10000.0,
                }
            },
        ),
        ("qwen2", {}),
        ("mistral", {"sliding_window": None}),
        ("starcoder2", {"sliding_window": None}),
        ("gpt_neox", {}),
        ("phi", {}),
    ],
)
def test_pie_layer0_equals_full(model_type, overrides):
    """Layer 0 sees no context, so moved-and-rotated suffix K/V must equal a fresh encoding."""
    model = tiny_model(model_type, **overrides)
    rng = random.Random(4)
    ids = random_ids(300, 4)
    cache = EditableCache(model, strategy="pie", initial_capacity=32)
    cache.reset(ids)
    for _ in range(6):
        batch = random_batch(rng, len(ids))
        ids = apply_to_ids(ids, batch)
        cache.apply_edits(batch)
    reference = fresh(model, ids)
    for got, want in zip(cache.layer_kv(0), reference.layer_kv(0)):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_pie_edit_at_end_gives_exact_logits(llama):
    ids = random_ids(50, 5)
    cache = EditableCache(llama, strategy="pie")
    cache.reset(ids)
    cache.replace(46, 50, [7, 8, 9, 10, 11, 12])
    ids = ids[:46] + [7, 8, 9, 10, 11, 12]
    reference = fresh(llama, ids)
    torch.testing.assert_close(
        cache.next_token_logits(), reference.next_token_logits(), atol=ATOL, rtol=0
    )
    cache.delete(50, 52)
    reference = fresh(llama, ids[:50])
    torch.testing.assert_close(
        cache.next_token_logits(), reference.next_token_logits(), atol=ATOL, rtol=0
    )


def test_pie_mid_edit_is_close_but_not_exact(llama):
    """Above layer 0 the suffix is stale: PIE is an approximation, and this shows it is one."""
    ids = random_ids(80, 6)
    cache = EditableCache(llama, strategy="pie")
    cache.reset(ids)
    cache.insert(10, [3, 4, 5])
    ids = ids[:10] + [3, 4, 5] + ids[10:]
    reference = fresh(llama, ids)
    last_keys = cache.layer_kv(1)[0]
    assert not torch.allclose(last_keys, reference.layer_kv(1)[0], atol=ATOL)
    cosine = torch.nn.functional.cosine_similarity(
        last_keys.flatten(1), reference.layer_kv(1)[0].flatten(1)
    )
    assert cosine.min() > 0.9


def test_no_rotation_drift_after_1000_edits(llama):
    ids = random_ids(200, 7)
    cache = EditableCache(llama, strategy="pie")
    cache.reset(ids)
    for step in range(1000):
        if step % 2 == 0:
            cache.insert(3, [11])
        else:
            cache.delete(3, 4)
    assert cache.token_ids == ids
    reference = fresh(llama, ids)
    torch.testing.assert_close(cache.layer_kv(0)[0], reference.layer_kv(0)[0], atol=ATOL, rtol=0)


def test_generate_matches_transformers_and_leaves_cache(llama):
    ids = random_ids(30, 8)
    cache = EditableCache(llama, strategy="pie", initial_capacity=16)
    cache.reset(ids)
    keys_before = cache.layer_kv(1)[0]
    out = cache.generate(20, lambda token, log_prob: True)
    reference = llama.generate(
        torch.tensor([ids]),
        max_new_tokens=20,
        do_sample=False,
        cache=DynamicCache(config=llama.config),
        eos_token_id=None,
        pad_token_id=0,
    )
    assert out == reference[0, 30:].tolist()
    assert cache.token_ids == ids
    torch.testing.assert_close(cache.layer_kv(1)[0], keys_before)
    stopped = cache.generate(20, lambda token, log_prob: False)
    assert len(stopped) == 1


def test_append_and_score(llama):
    ids = random_ids(20, 9)
    cache = EditableCache(llama)
    cache.reset(ids[:10])
    scored = cache.score(ids[10:])
    assert cache.token_ids == ids[:10]
    appended = cache.append(ids[10:])
    torch.testing.assert_close(scored, appended, atol=ATOL, rtol=0)
    reference = fresh(llama, ids)
    torch.testing.assert_close(
        cache.next_token_logits(), reference.next_token_logits(), atol=ATOL, rtol=0
    )


def snapshot(cache: EditableCache):
    return (
        cache.token_ids,
        cache.positions,
        [cache.layer_kv(i) for i in range(cache.spec.num_layers)],
    )


def assert_same(a, b):
    assert a[0] == b[0]
    assert torch.equal(a[1], b[1])
    for (k1, v1), (k2, v2) in zip(a[2], b[2]):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda c: c.insert(31, [1]), "out of range"),
        (lambda c: c.delete(-1, 2), "out of range"),
        (lambda c: c.delete(5, 3), "out of range"),
        (lambda c: c.apply_edits([TokenEdit(2, 6, (1,)), TokenEdit(5, 7, ())]), "overlap"),
        (lambda c: c.apply_edits([TokenEdit(4, 4, (1,)), TokenEdit(4, 4, (2,))]), "overlap"),
        (lambda c: c.insert(3, [1] * 40), "at most 64"),
        (lambda c: c.insert(3, [999]), "999"),
        (lambda c: c.insert(3, torch.tensor([1.0, 2.0])), "float32"),
        (lambda c: c.insert(3, torch.tensor([1, 2], device="meta")), "meta"),
        (lambda c: c.apply_edits([TokenEdit(1, 2, (3,))], strategy="magic"), "magic"),
        (lambda c: c.truncate(99), "99"),
    ],
)
def test_bad_input_leaves_cache_unchanged(llama, call, match):
    cache = EditableCache(llama, strategy="pie", initial_capacity=32, max_capacity=64)
    cache.reset(random_ids(30, 10))
    before = snapshot(cache)
    with pytest.raises(ValueError, match=match):
        call(cache)
    assert_same(before, snapshot(cache))


def test_capacity_grows_geometrically(llama):
    cache = EditableCache(llama, initial_capacity=16)
    cache.reset(random_ids(17, 11))
    assert cache.capacity == 32
    cache.insert(0, random_ids(20, 12))
    assert cache.capacity == 64


@pytest.mark.parametrize(
    "model_type,overrides,reason",
    [
        ("gpt2", {}, "no rotary"),
        (
            "llama",
            {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
            "dynamic",
        ),
    ],
)
def test_unsupported_models_are_refused(model_type, overrides, reason):
    model = tiny_model(model_type, **overrides)
    with pytest.raises(UnsupportedModelError, match=reason) as error:
        EditableCache(model)
    assert repr(model.config.model_type) in str(error.value)


def test_growth_during_generation_keeps_buffers_editable(llama):
    """Buffers grown inside generation (inference mode) must still take in-place edits."""
    ids = random_ids(14, 13)
    cache = EditableCache(llama, strategy="pie", initial_capacity=16)
    cache.reset(ids)
    cache.generate(10, lambda token, log_prob: True)
    assert cache.capacity == 32
    cache.insert(0, [5, 6])
    reference = fresh(llama, [5, 6, *ids])
    torch.testing.assert_close(cache.layer_kv(0)[0], reference.layer_kv(0)[0], atol=ATOL, rtol=0)


def test_generate_reports_each_tokens_log_probability(llama):
    ids = random_ids(30, 9)
    cache = EditableCache(llama, strategy="pie")
    cache.reset(ids)
    seen: list[tuple[int, float]] = []
    out = cache.generate(6, lambda token, log_prob: seen.append((token, log_prob)) or True)
    assert [token for token, _ in seen] == out
    for step, (token, log_prob) in enumerate(seen):
        logits = fresh(llama, ids + out[:step]).next_token_logits()
        expected = torch.log_softmax(logits, dim=-1)[token]
        assert abs(log_prob - float(expected)) < 1e-4


def test_constrained_tokens_are_the_most_likely_allowed_ones(llama):
    ids = random_ids(30, 10)
    cache = EditableCache(llama, strategy="pie")
    cache.reset(ids)
    free = cache.generate(4, lambda token, log_prob: True)
    banned = free[0]
    allowed = torch.tensor([i for i in range(llama.config.vocab_size) if i != banned])

    def first_two(generated):
        return allowed if len(generated) < 2 else None

    out = cache.generate(4, lambda token, log_prob: True, constraint=first_two)
    logits = cache.next_token_logits()
    masked = logits.clone()
    masked[banned] = float("-inf")
    assert out[0] == int(masked.argmax()) != banned
    # Once the constraint lets go, decoding is plain greedy from what was generated.
    reference = fresh(llama, ids + out[:2]).generate(2, lambda token, log_prob: True)
    assert out[2:] == reference
    assert cache.token_ids == ids
