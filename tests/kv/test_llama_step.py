"""The lean forward (llama_step.py) against the transformers forward, on random-weight models.

Both run through an EditableCache on the same operations; logits and every cached key and value
must agree to fp32 reordering error (atol 1e-5, the tiny models' values are O(1)), and greedy
decoding must give the same tokens.
"""

from __future__ import annotations

import random

import pytest
import torch

from cache_engine.kv.editable_cache import EditableCache
from cache_engine.kv.llama_step import LlamaStep, UnsupportedStepError, store_weights_transposed
from cache_engine.kv.token_edits import TokenEdit
from tests.model_factory import tiny_model

ATOL = 1e-5

MODELS = {
    "llama": lambda: tiny_model("llama"),
    "qwen2": lambda: tiny_model("qwen2"),
    "mistral": lambda: tiny_model("mistral"),
    "qwen3": lambda: tiny_model("qwen3", head_dim=16),
    # Every projection with a bias, and one K/V head per query head (no grouping).
    "llama-biases-mha": lambda: tiny_model(
        "llama", attention_bias=True, mlp_bias=True, num_key_value_heads=4
    ),
    # yarn scales cos and sin by its attention factor.
    "llama-yarn": lambda: tiny_model(
        "llama",
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 1024,
        },
    ),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


def random_ids(n: int, seed: int, vocab: int = 160) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(vocab) for _ in range(n)]


def twin_caches(model, ids: list[int], **options) -> tuple[EditableCache, EditableCache]:
    lean = EditableCache(model, strategy="pie", forward="lean", **options)
    hf = EditableCache(model, strategy="pie", forward="hf", **options)
    assert (lean.forward_path, hf.forward_path) == ("lean", "hf")
    lean.reset(ids)
    hf.reset(ids)
    return lean, hf


def assert_same_cache(lean: EditableCache, hf: EditableCache) -> None:
    assert lean.token_ids == hf.token_ids
    assert torch.equal(lean.positions, hf.positions)
    for layer in range(lean.spec.num_layers):
        lean_keys, lean_values = lean.layer_kv(layer)
        hf_keys, hf_values = hf.layer_kv(layer)
        torch.testing.assert_close(lean_keys, hf_keys, atol=ATOL, rtol=0)
        torch.testing.assert_close(lean_values, hf_values, atol=ATOL, rtol=0)


def assert_close_logits(lean: torch.Tensor, hf: torch.Tensor) -> None:
    assert lean.dtype == hf.dtype == torch.float32
    torch.testing.assert_close(lean, hf, atol=ATOL, rtol=0)


def test_prefill_decode_and_verify_match_transformers(model) -> None:
    # Over two prefill chunks' worth would be slow; 300 tokens still spans many rotary periods.
    lean, hf = twin_caches(model, random_ids(300, 1), initial_capacity=16)
    assert_close_logits(lean.next_token_logits(), hf.next_token_logits())
    assert_same_cache(lean, hf)
    for token in random_ids(3, 2):  # decode: one token at a time
        assert_close_logits(lean.append([token]), hf.append([token]))
    assert_same_cache(lean, hf)
    verify = random_ids(6, 3)  # a drafted continuation, scored in one pass at the end
    assert_close_logits(lean.score(verify), hf.score(verify))
    assert_same_cache(lean, hf)


def test_pie_edits_in_the_middle_match_transformers(model) -> None:
    lean, hf = twin_caches(model, random_ids(120, 4))
    edits = [
        [TokenEdit.insert(40, tuple(random_ids(5, 5)))],
        [TokenEdit.delete(10, 17)],
        [TokenEdit.replace(60, 62, tuple(random_ids(3, 6))), TokenEdit.insert(90, (7,))],
    ]
    for batch in edits:
        lean.apply_edits(batch)
        hf.apply_edits(batch)
        # The lean forward re-feeds the stale last token in the edit's own pass, the
        # transformers one when the logits are asked for; after that the caches agree.
        assert_close_logits(lean.next_token_logits(), hf.next_token_logits())
        assert lean.exact_tokens == hf.exact_tokens
        assert_same_cache(lean, hf)
    lean.refresh_stale(chunk=32)
    hf.refresh_stale(chunk=32)
    assert_same_cache(lean, hf)
    assert_close_logits(lean.next_token_logits(), hf.next_token_logits())


def test_an_edit_and_the_last_token_share_one_pass(model) -> None:
    lean, hf = twin_caches(model, random_ids(90, 12))
    batch = [TokenEdit.insert(20, tuple(random_ids(4, 13))), TokenEdit.replace(50, 52, (9,))]
    passes = []
    step = lean._lean_step
    lean._lean_step = lambda ids, slot, *rest, **options: (
        passes.append(ids) or step(ids, slot, *rest, **options)
    )
    lean.apply_edits(batch)
    logits = lean.next_token_logits()
    lean._lean_step = step
    assert [len(ids) for ids in passes] == [4 + 1 + 1]  # both runs and the last token
    hf.apply_edits(batch)
    assert_close_logits(logits, hf.next_token_logits())
    assert lean.exact_tokens == hf.exact_tokens
    assert_same_cache(lean, hf)


def test_an_edit_that_ends_the_sequence_before_a_deleted_tail(model) -> None:
    lean, hf = twin_caches(model, random_ids(40, 14))
    # The replacement's tokens become the last ones: no separate re-feed, on either forward.
    batch = [TokenEdit.replace(30, 31, (5, 6, 7)), TokenEdit.delete(31, 40)]
    lean.apply_edits(batch)
    hf.apply_edits(batch)
    assert lean.token_ids[-3:] == [5, 6, 7]
    assert_close_logits(lean.next_token_logits(), hf.next_token_logits())
    assert lean.exact_tokens == hf.exact_tokens == 33
    assert_same_cache(lean, hf)


def test_scattered_slots_are_checked(model) -> None:
    step = LlamaStep(model)
    spec = EditableCache(model, forward="hf").spec
    shape = (spec.num_layers, spec.num_kv_heads, 16, spec.head_dim)
    keys, values = torch.zeros(shape), torch.zeros(shape)
    ids = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="not 2 increasing slots"):
        step(ids, torch.tensor([5, 5]), keys, values)
    with pytest.raises(ValueError, match="do not fit"):
        step(ids, torch.tensor([3, 16]), keys, values)


def test_greedy_generation_is_the_same_on_both_forwards(model) -> None:
    lean, hf = twin_caches(model, random_ids(50, 7), initial_capacity=16)
    # The slab grows twice while decoding: the lean step must follow the new buffers.
    lean_tokens = lean.generate(40, lambda *_: True)
    hf_tokens = hf.generate(40, lambda *_: True)
    assert lean_tokens == hf_tokens
    assert len(lean_tokens) == 40


def test_the_step_returns_the_last_or_all_logits(model) -> None:
    step = LlamaStep(model)
    spec = EditableCache(model, forward="hf").spec
    shape = (spec.num_layers, spec.num_kv_heads, 32, spec.head_dim)
    keys, values = torch.zeros(shape), torch.zeros(shape)
    ids = torch.tensor(random_ids(10, 8))
    all_logits = step(ids, 3, keys, values, all_logits=True)
    last = step(ids, 3, keys, values)
    assert all_logits.shape == (10, model.config.vocab_size)
    assert last.shape == (1, model.config.vocab_size)
    torch.testing.assert_close(last[0], all_logits[-1], atol=ATOL, rtol=0)
    # Slots before 3 and from 13 on were not written.
    assert not keys[:, :, :3].any() and not keys[:, :, 13:].any()
    with pytest.raises(ValueError, match="do not fit"):
        step(ids, 25, keys, values)


@pytest.mark.parametrize("model_type", ["gpt_neox", "phi", "starcoder2"])
def test_other_architectures_keep_the_transformers_forward(model_type) -> None:
    other = tiny_model(model_type)
    with pytest.raises(UnsupportedStepError, match=repr(model_type)):
        LlamaStep(other)
    assert EditableCache(other).forward_path == "hf"
    with pytest.raises(UnsupportedStepError, match=repr(model_type)):
        EditableCache(other, forward="lean")


def test_an_unknown_forward_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown forward"):
        EditableCache(tiny_model("llama"), forward="fast")  # type: ignore[arg-type]


def test_one_token_products_through_blas_match_torch(model) -> None:
    spec = EditableCache(model, forward="hf").spec
    shape = (spec.num_layers, spec.num_kv_heads, 128, spec.head_dim)
    runs = {}
    for blas in (False, True):
        step = LlamaStep(model, blas_products=blas)
        assert step.blas_products is blas
        keys, values = torch.zeros(shape), torch.zeros(shape)
        logits = [step(torch.tensor(random_ids(60, 10)), 0, keys, values)]
        tokens = [int(logits[-1].argmax())]
        # Greedy decoding one token at a time: the products that go through BLAS.
        for slot in range(60, 100):
            logits.append(step(torch.tensor(tokens[-1:]), slot, keys, values))
            tokens.append(int(logits[-1].argmax()))
        runs[blas] = (tokens, torch.cat(logits), keys, values)
    assert runs[True][0] == runs[False][0]
    for blas_result, torch_result in zip(runs[True][1:], runs[False][1:], strict=True):
        torch.testing.assert_close(blas_result, torch_result, atol=ATOL, rtol=0)


def test_passes_of_several_rows_through_onednn_match_torch(model) -> None:
    spec = EditableCache(model, forward="hf").spec
    shape = (spec.num_layers, spec.num_kv_heads, 128, spec.head_dim)
    runs = {}
    for onednn in (False, True):
        step = LlamaStep(model, onednn_products=onednn, blas_products=False)
        assert step.products.onednn is onednn
        keys, values = torch.zeros(shape), torch.zeros(shape)
        # A prefill, a run of new tokens in the middle (an edit), a verify pass, one token.
        logits = [
            step(torch.tensor(random_ids(70, 11)), 0, keys, values, all_logits=True),
            step(torch.tensor(random_ids(5, 12)), 30, keys, values, all_logits=True),
            step(torch.tensor(random_ids(9, 13)), 70, keys, values, all_logits=True),
            step(torch.tensor(random_ids(1, 14)), 79, keys, values),
        ]
        runs[onednn] = (torch.cat(logits), keys, values)
    for onednn_result, torch_result in zip(runs[True], runs[False], strict=True):
        torch.testing.assert_close(onednn_result, torch_result, atol=ATOL, rtol=0)


def test_blas_and_onednn_products_are_refused_off_cpu_float32() -> None:
    model = tiny_model("llama").to(torch.bfloat16)
    with pytest.raises(UnsupportedStepError, match=r"float32 weights on CPU, not torch\.bfloat16"):
        LlamaStep(model, blas_products=True)
    with pytest.raises(UnsupportedStepError, match=r"onednn_products multiplies float32"):
        LlamaStep(model, onednn_products=True)
    assert not LlamaStep(model).blas_products
    assert not LlamaStep(model).onednn_products


def test_auto_picks_the_lean_forward_for_llama() -> None:
    assert EditableCache(tiny_model("llama")).forward_path == "lean"


def test_weights_stored_transposed_give_the_same_logits() -> None:
    model = tiny_model("qwen2", seed=3)
    ids = random_ids(60, 9)
    built_before = EditableCache(model, forward="lean")
    built_before.reset(ids)
    expected = built_before.next_token_logits().clone()
    assert store_weights_transposed(model) > 0
    assert not model.model.layers[0].mlp.up_proj.weight.is_contiguous()
    assert model.model.layers[0].mlp.up_proj.weight.t().is_contiguous()
    for forward in ("lean", "hf"):
        cache = EditableCache(model, forward=forward)
        cache.reset(ids)
        assert_close_logits(cache.next_token_logits(), expected)
    # A step multiplies by the parameters as they are now, even when their data was replaced
    # (as above) after it was built.
    with torch.no_grad():
        up = model.model.layers[0].mlp.up_proj.weight
        up.data = up.data * 2
    reference = EditableCache(model, forward="hf")
    reference.reset(ids)
    built_before.reset(ids)
    assert_close_logits(built_before.next_token_logits(), reference.next_token_logits())
    assert not torch.allclose(reference.next_token_logits(), expected, atol=ATOL)
