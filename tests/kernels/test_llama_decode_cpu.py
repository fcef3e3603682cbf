"""The compiled pass (kernels/llama_decode_cpu.c) against the torch lean step, its reference
(cache_engine/kv/llama_step.py), for one token and for several at adjacent or scattered slots;
tests/kv/test_llama_step.py also runs it, through EditableCache, against the transformers
forward."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from cache_engine.kv.editable_cache import EditableCache
from cache_engine.kv.llama_step import (
    COMPILED_MAX_ROWS,
    LlamaStep,
    UnsupportedStepError,
    store_weights_transposed,
)
from cache_engine.model.loading import load_model
from cache_engine.model.quantization import (
    Int8DynamicLinear,
    Int8WeightOnlyLinear,
    quantize_int8_dynamic,
    quantize_int8_weight_only,
)
from kernels import llama_decode_cpu
from kernels.llama_decode_cpu import CompiledStepUnavailable, compiled_library
from tests.model_factory import tiny_model

MODELS = {
    "llama": lambda: tiny_model("llama"),
    "qwen2-biases": lambda: tiny_model("qwen2"),
    # Odd sizes: nothing is a multiple of a vector, seven query heads share each K/V head.
    "llama-odd": lambda: tiny_model(
        "llama",
        hidden_size=84,
        intermediate_size=101,
        num_attention_heads=7,
        num_key_value_heads=1,
        head_dim=12,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=False,
    ),
}


@pytest.fixture(params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


def slab(model, capacity: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    step = LlamaStep(model, compiled_step=False)
    shape = (model.config.num_hidden_layers, step.num_kv_heads, capacity, step.head_dim)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def compare(model, slots: list[int], capacity: int = 150) -> None:
    compiled = LlamaStep(model, compiled_step=True)
    reference = LlamaStep(model, compiled_step=False)
    assert compiled.compiled_step_off is None
    keys, values = slab(model, capacity, 0)
    ref_keys, ref_values = keys.clone(), values.clone()
    rng = random.Random(1)
    for slot in slots:
        token = torch.tensor([rng.randrange(model.config.vocab_size)])
        logits = compiled(token, slot, keys, values)
        expected = reference(token, slot, ref_keys, ref_values)
        assert logits.shape == expected.shape == (1, model.config.vocab_size)
        torch.testing.assert_close(logits, expected, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(keys, ref_keys, atol=2e-5, rtol=0)
        torch.testing.assert_close(values, ref_values, atol=2e-5, rtol=0)


def test_matches_the_torch_step_at_every_kind_of_slot(model) -> None:
    # The first slot, short and long attention spans, the slab's last slot; the slab beyond
    # each slot holds random values that attention must not read and the write must not touch.
    compare(model, [0, 1, 3, 64, 65, 130, 149])


def test_attention_over_several_blocks_of_slots_counts_each_slot_once(model) -> None:
    # Past 256 slots keys and values go by blocks, and values by sub-blocks within them, whose
    # length follows head_dim (12 in llama-odd, which a block does not divide).
    compare(model, [300, 301, 399], capacity=400)


def compare_rows(model, runs: list[list[int]], all_logits: bool, capacity: int = 150) -> None:
    """Each run of slots goes through both steps as one pass, in order, over the same slab."""
    compiled = LlamaStep(model, compiled_step=True)
    reference = LlamaStep(model, compiled_step=False)
    keys, values = slab(model, capacity, 6)
    ref_keys, ref_values = keys.clone(), values.clone()
    rng = random.Random(7)
    for slots in runs:
        ids = torch.tensor([rng.randrange(model.config.vocab_size) for _ in slots])
        adjacent = slots == list(range(slots[0], slots[0] + len(slots)))
        at = slots[0] if adjacent else torch.tensor(slots)
        logits = compiled(ids, at, keys, values, all_logits=all_logits)
        # Not a silent fall-back to torch.
        assert compiled.compiled_step_off is None
        expected = reference(ids, at, ref_keys, ref_values, all_logits=all_logits)
        rows = len(slots) if all_logits else 1
        assert logits.shape == expected.shape == (rows, model.config.vocab_size)
        torch.testing.assert_close(logits, expected, atol=5e-5, rtol=1e-5)
        torch.testing.assert_close(keys, ref_keys, atol=5e-5, rtol=0)
        torch.testing.assert_close(values, ref_values, atol=5e-5, rtol=0)


@pytest.mark.parametrize("all_logits", [False, True])
def test_passes_of_several_tokens_match_the_torch_step(model, all_logits: bool) -> None:
    # A prefill from slot 0, a verify-like run after it, scattered slots (an edit's new tokens
    # with the document's last token re-fed far after them), the most rows a pass sends to C
    # (past 16 rows, products hold back fewer weight rows' partial sums), and a run of 16 ending
    # at the slab's last slot.
    compare_rows(
        model,
        [
            list(range(0, 5)),
            list(range(5, 14)),
            [20, 21, 22, 90],
            list(range(91, 91 + COMPILED_MAX_ROWS)),
            list(range(134, 150)),
        ],
        all_logits,
    )


def assert_a_pass_equals_one_token_steps(model) -> None:
    compiled = LlamaStep(model, compiled_step=True)
    keys, values = slab(model, 60, 8)
    one_keys, one_values = keys.clone(), values.clone()
    ids = torch.tensor([3, 1, 4, 1, 5, 9, 2])
    # Bit for bit: a verify pass must give the logits of one-token steps, or speculation could
    # pick another token at a near tie. Slots 30-36 put the keys 24-30 in a block of eight
    # keys for the later tokens and left over past the last whole block for the first.
    together = compiled(ids, 30, keys, values, all_logits=True)
    apart = torch.cat([compiled(ids[i : i + 1], 30 + i, one_keys, one_values) for i in range(7)])
    torch.testing.assert_close(together, apart, atol=0, rtol=0)
    torch.testing.assert_close(keys, one_keys, atol=0, rtol=0)
    torch.testing.assert_close(values, one_values, atol=0, rtol=0)


def test_a_pass_of_several_tokens_equals_them_one_at_a_time(model) -> None:
    assert_a_pass_equals_one_token_steps(model)


def test_matches_with_weights_stored_transposed(model) -> None:
    compiled = LlamaStep(model, compiled_step=True)
    keys, values = slab(model, 40, 2)
    before = compiled(torch.tensor([3]), 20, keys.clone(), values.clone())
    store_weights_transposed(model)
    # The same step object sees the new storage: same values, read in the other order.
    after = compiled(torch.tensor([3]), 20, keys.clone(), values.clone())
    torch.testing.assert_close(after, before, atol=2e-5, rtol=1e-5)
    compare(model, [0, 17, 39], capacity=40)
    # Every count of rows a group of transposed columns takes (1-4), and more than one group.
    runs = [[0, 1], list(range(3, 8)), list(range(8, 14)), [14, 15, 16], [20], list(range(21, 30))]
    compare_rows(model, runs, all_logits=True, capacity=40)


def test_one_thread_and_two_give_the_same_bits(model) -> None:
    compiled = LlamaStep(model, compiled_step=True)._compiled_step()
    step = LlamaStep(model, compiled_step=False)
    cos, signed_sin = step.rotary_table(100)
    results = []
    for threads in (1, 2):
        keys, values = slab(model, 100, 3)
        logits = compiled(
            [5, 6, 7],
            [90, 91, 99],
            keys,
            values,
            cos[[90, 91, 99]],
            signed_sin[[90, 91, 99]],
            threads,
            all_logits=True,
        )
        results.append((logits, keys, values))
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_a_bound_pass_gives_the_bits_of_the_unbound_one(model) -> None:
    compiled = LlamaStep(model, compiled_step=True)._compiled_step()
    cos, signed_sin = LlamaStep(model, compiled_step=False).rotary_table(90)
    keys, values = slab(model, 90, 6)
    bound_keys, bound_values = keys.clone(), values.clone()
    bound = compiled.bind(bound_keys, bound_values, cos, signed_sin, 2)
    # Another slab between the bound passes: the struct the C pass reads is the forward's, so
    # the bound pass must point it back at its own slab.
    other_keys, other_values = slab(model, 40, 7)
    for tokens, slot in (([4], 0), ([9], 1), ([2, 7, 1, 8, 2], 40), ([5], 89), ([6, 6], 60)):
        rows = slice(slot, slot + len(tokens))
        expected = compiled(
            tokens,
            list(range(rows.start, rows.stop)),
            keys,
            values,
            cos[rows],
            signed_sin[rows],
            2,
            all_logits=True,
        )
        compiled([3], [39], other_keys, other_values, cos[39:40], signed_sin[39:40], 2)
        assert torch.equal(bound(tokens, slot, all_logits=True), expected)
        assert torch.equal(bound_keys, keys) and torch.equal(bound_values, values)
    last = bound([1, 2, 3], 10)
    assert last.shape == (1, model.config.vocab_size)


def test_a_bound_pass_names_what_it_refuses_and_writes_nothing() -> None:
    model = tiny_model("llama")
    compiled = LlamaStep(model, compiled_step=True)._compiled_step()
    cos, signed_sin = LlamaStep(model, compiled_step=False).rotary_table(8)
    keys, values = slab(model, 8, 5)
    vocab = model.config.vocab_size
    with pytest.raises(ValueError, match=r"cos_table must hold 8 contiguous rows of 16, got"):
        compiled.bind(keys, values, cos[:7], signed_sin, 2)
    with pytest.raises(ValueError, match=r"keys must be \[2, 2, capacity, 16\]"):
        compiled.bind(keys[..., 0], values, cos, signed_sin, 2)
    bound = compiled.bind(keys, values, cos, signed_sin, 2)
    untouched = keys.clone(), values.clone()
    with pytest.raises(ValueError, match=rf"refused tokens \[1, {vocab}\] at \[3, 4\]"):
        bound([1, vocab], 3)
    with pytest.raises(
        ValueError,
        match="2 tokens at slot 7: a pass takes 1 to 64 tokens within the slab's 8 slots",
    ):
        bound([1, 2], 7)
    with pytest.raises(ValueError, match="0 tokens at slot 0"):
        bound([], 0)
    assert torch.equal(keys, untouched[0]) and torch.equal(values, untouched[1])


def test_greedy_decoding_of_the_default_model_is_unchanged() -> None:
    model = load_model("default").model
    ids = random.Random(4).choices(range(model.config.vocab_size), k=700)
    outputs = []
    for compiled_step in (True, False):
        cache = EditableCache(model, forward="lean", compiled_step=compiled_step)
        assert (cache._lean_step.compiled_step_off is None) == compiled_step
        cache.reset(ids)
        outputs.append(cache.generate(40, lambda *_: True))
    assert outputs[0] == outputs[1]


def test_bad_arguments_name_the_bad_value() -> None:
    model = tiny_model("llama")
    compiled = LlamaStep(model, compiled_step=True)._compiled_step()
    cos, signed_sin = LlamaStep(model, compiled_step=False).rotary_table(8)
    keys, values = slab(model, 8, 5)
    vocab = model.config.vocab_size
    one = (cos[:1], signed_sin[:1], 2)
    with pytest.raises(ValueError, match=f"token {vocab} is outside the vocabulary of {vocab}"):
        compiled([vocab], [0], keys, values, *one)
    with pytest.raises(ValueError, match="slot 8 is outside the slab's 8 slots"):
        compiled([1], [8], keys, values, *one)
    with pytest.raises(ValueError, match=r"keys must be \[2, 2, capacity, 16\], got \(2, 2, 8\)"):
        compiled([1], [0], keys[..., 0], values, *one)
    with pytest.raises(
        CompiledStepUnavailable, match=r"float32 or bfloat16 CPU tensors; keys is torch\.float64"
    ):
        compiled([1], [0], keys.double(), values, *one)
    with pytest.raises(ValueError, match=r"values \(2, 2, 8, 16\) torch\.bfloat16 differ"):
        compiled([1], [0], keys, values.bfloat16(), *one)
    with pytest.raises(ValueError, match=r"slots \[3, 3\] are not increasing"):
        compiled([1, 2], [3, 3], keys, values, cos[:2], signed_sin[:2], 2)
    with pytest.raises(ValueError, match="65 tokens at 65 slots: a pass takes 1 to 64 tokens"):
        compiled([1] * 65, range(65), keys, values, cos, signed_sin, 2)
    with pytest.raises(ValueError, match="cos must be 2 x 16 contiguous values"):
        compiled([1, 2], [3, 4], keys, values, cos[:1], signed_sin[:2], 2)
    untouched = keys.clone()
    with pytest.raises(ValueError):
        compiled([1], [0], keys, values[:, :, :4], *one)
    assert torch.equal(keys, untouched)


def test_models_it_cannot_run_keep_the_torch_step(monkeypatch) -> None:
    qwen3 = tiny_model("qwen3", head_dim=16)
    assert LlamaStep(qwen3).compiled_step_off == "the compiled step has no per-head q/k norms"
    with pytest.raises(UnsupportedStepError, match="no per-head q/k norms"):
        LlamaStep(qwen3, compiled_step=True)
    monkeypatch.setenv("PIE_LSP_COMPILED_STEP", "0")
    assert LlamaStep(tiny_model("llama")).compiled_step_off == "PIE_LSP_COMPILED_STEP=0"


def test_without_a_compiler_it_says_which(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CC", "no-such-cc")
    with pytest.raises(CompiledStepUnavailable, match="no C compiler 'no-such-cc' on PATH"):
        compiled_library.__wrapped__()
    failing = tmp_path / "failing-cc"
    failing.write_text("#!/bin/sh\necho 'cc: error: broken' >&2\nexit 3\n")
    failing.chmod(0o755)
    with pytest.raises(CompiledStepUnavailable, match="exited 3: cc: error: broken"):
        llama_decode_cpu._build(str(failing), tmp_path / "out.so")
    assert not (tmp_path / "out.so").exists()


# bfloat16 keeps 8 bits of mantissa: one rounding is within 2^-8 of the value.
BF16 = {"atol": 2e-2, "rtol": 2e-2}


def agree_over_passes(compiled, reference, slab_pair, slab_atol: float) -> None:
    """Passes of three, one and nine tokens through both steps over copies of one slab: the
    logits agree to 1e-5, the slabs to `slab_atol`."""
    keys, values = slab_pair
    ref_keys, ref_values = keys.clone(), values.clone()
    for slot, ids in ((0, [3, 4, 5]), (3, [7]), (20, list(range(9, 18)))):
        ids = torch.tensor(ids)
        logits = compiled(ids, slot, keys, values, all_logits=True)
        expected = reference(ids, slot, ref_keys, ref_values, all_logits=True)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(keys, ref_keys, atol=slab_atol, rtol=0)
        torch.testing.assert_close(values, ref_values, atol=slab_atol, rtol=0)


def widened_copy(narrow):
    """A float32 model holding exactly the values of `narrow`'s bfloat16 weights."""
    wide = type(narrow)(narrow.config)
    wide.load_state_dict({name: value.float() for name, value in narrow.state_dict().items()})
    # .to(bfloat16) also rounded the rotary frequencies, a buffer the state dict leaves out.
    rotary = wide.get_decoder().rotary_emb
    rotary.inv_freq = narrow.get_decoder().rotary_emb.inv_freq.float()
    return wide.float().eval()


def test_bfloat16_weights_read_as_their_float32_values(model) -> None:
    # The pass widens each bfloat16 value exactly as it reads it, so the same weights in
    # bfloat16 and widened to float32 agree to float32 rounding, for one row and several.
    narrow = model.to(torch.bfloat16)
    compiled = LlamaStep(narrow, compiled_step=True)
    reference = LlamaStep(widened_copy(narrow), compiled_step=True)
    assert compiled.compiled_step_off is None
    agree_over_passes(compiled, reference, slab(model, 40, 2), slab_atol=1e-6)


def test_a_bfloat16_slab_holds_what_torch_would_round_to(model) -> None:
    # One pass of one token: its first layer's keys and values land rounded to nearest-even, bit
    # for bit what .to(torch.bfloat16) gives for the float32 pass's. Later layers read the
    # rounded values of the token itself, so they and the logits differ by that rounding only.
    step = LlamaStep(model, compiled_step=True)
    keys, values = slab(model, 40, 3)
    keys, values = keys.bfloat16(), values.bfloat16()
    wide_keys, wide_values = keys.float(), values.float()
    for slot in (0, 17, 39):
        token = torch.tensor([slot % model.config.vocab_size])
        logits = step(token, slot, keys, values)
        expected = step(token, slot, wide_keys, wide_values)
        assert torch.equal(keys[0, :, slot], wide_keys[0, :, slot].bfloat16())
        assert torch.equal(values[0, :, slot], wide_values[0, :, slot].bfloat16())
        for narrow, wide in ((keys, wide_keys), (values, wide_values)):
            torch.testing.assert_close(narrow[:, :, slot].float(), wide[:, :, slot], **BF16)
        torch.testing.assert_close(logits, expected, **BF16)
        wide_keys[:, :, slot] = keys[:, :, slot].float()
        wide_values[:, :, slot] = values[:, :, slot].float()
    # Elsewhere both slabs still hold the same values.
    torch.testing.assert_close(keys.float(), wide_keys, atol=0, rtol=0)


def dequantized_copy(model):
    """An int8 copy of `model` (quantize_int8_weight_only) and a float32 copy holding exactly
    the weights it stands for, q · s, with its own lm_head as quantization unties it."""
    quantized = copy.deepcopy(model)
    quantize_int8_weight_only(quantized)
    wide = copy.deepcopy(model)
    for name, module in quantized.named_modules():
        if isinstance(module, Int8WeightOnlyLinear):
            target = wide.get_submodule(name)
            target.weight = torch.nn.Parameter(module.dequantized_weight())
    return quantized.eval(), wide.eval()


def test_int8_weights_read_as_the_values_they_stand_for(model) -> None:
    # Each int8 row's sum is scaled once at the end, where the reference multiplies by q · s:
    # the two agree to float32 rounding, for one row and for several.
    quantized, wide = dequantized_copy(model)
    compiled = LlamaStep(quantized, compiled_step=True)
    reference = LlamaStep(wide, compiled_step=True)
    assert compiled.compiled_step_off is None
    agree_over_passes(compiled, reference, slab(model, 40, 4), slab_atol=1e-5)
    # Torch's int8 kernel rounds the activations to bfloat16; it stays within that rounding.
    torch_int8 = LlamaStep(quantized, compiled_step=False)
    keys, values = slab(model, 40, 4)
    expected = torch_int8(torch.tensor([3, 4, 5]), 0, keys, values, all_logits=True)
    torch.testing.assert_close(
        compiled(torch.tensor([3, 4, 5]), 0, *slab(model, 40, 4), all_logits=True),
        expected,
        **BF16,
    )


def test_int8_scales_must_come_with_int8_weights(model) -> None:
    step = LlamaStep(model, compiled_step=False)
    weight, bias = step.layers[0].q
    scales = torch.ones(weight.shape[0])
    with pytest.raises(CompiledStepUnavailable, match=r"layer 0 q_proj has scales, so its weights"):
        llama_decode_cpu._projection("layer 0 q_proj", (weight, bias, scales), *weight.shape, [])
    int8 = torch.zeros(weight.shape, dtype=torch.int8)
    with pytest.raises(CompiledStepUnavailable, match=r"layer 0 q_proj scales must be a contig"):
        llama_decode_cpu._projection("layer 0 q_proj", (int8, bias, scales[1:]), *weight.shape, [])


def test_long_bfloat16_passes_run_in_compiled_chunks(model) -> None:
    # More than COMPILED_MAX_ROWS tokens of a bfloat16 model go through the C pass in chunks,
    # each seeing what the chunks before wrote: float32 arithmetic, so they agree with a float32
    # model of the same values to float32 rounding (torch's bfloat16 step, rounding activations,
    # differs by about 1e-2; it also needs a bfloat16 slab).
    narrow = model.to(torch.bfloat16)
    chunked = LlamaStep(narrow, compiled_step=True)
    reference = LlamaStep(widened_copy(narrow), compiled_step=False)
    n = 2 * COMPILED_MAX_ROWS + 5
    ids = torch.tensor([i % model.config.vocab_size for i in range(7, 7 + n)])
    scattered = torch.tensor(sorted(random.Random(3).sample(range(10, 140), n)))
    for slot in (5, scattered):
        keys, values = slab(model, 150, 5)
        ref_keys, ref_values = keys.clone(), values.clone()
        logits = chunked(ids, slot, keys, values, all_logits=True)
        expected = reference(ids, slot, ref_keys, ref_values, all_logits=True)
        assert logits.shape == (n, model.config.vocab_size)
        torch.testing.assert_close(logits, expected, atol=5e-5, rtol=1e-5)
        torch.testing.assert_close(keys, ref_keys, atol=5e-5, rtol=0)
        last = chunked(ids, slot, keys, values)
        torch.testing.assert_close(last, expected[-1:], atol=5e-5, rtol=1e-5)


# Sizes that are multiples of the 32-value activation block but not of the 64 that the int8
# products read at once: every product ends in half a chunk.
HALF_CHUNK_SHAPE = {
    "hidden_size": 96,
    "intermediate_size": 160,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 24,
}


@pytest.fixture(params=["llama", "qwen2-biases", "half-chunks"])
def dynamic_model(request):
    """A model quantized by quantize_int8_dynamic, every projection with int8 activations."""
    if request.param == "half-chunks":
        model = tiny_model("llama", tie_word_embeddings=False, **HALF_CHUNK_SHAPE)
    else:
        model = MODELS[request.param]()
    quantize_int8_dynamic(model)
    projections = [
        m for m in model.model.modules() if isinstance(m, Int8WeightOnlyLinear)
    ]  # the decoder's; the lm_head keeps float inputs
    assert projections and all(isinstance(m, Int8DynamicLinear) for m in projections)
    assert type(model.lm_head) is Int8WeightOnlyLinear
    return model.eval()


def test_int8_activation_products_match_their_torch_reference(dynamic_model) -> None:
    # The C pass quantizes each input row as Int8DynamicLinear does and sums the int8 products in
    # integers; the torch forward multiplies the dequantized rows in float32. Same numbers, summed
    # in another order: they agree to float32 rounding, for one row and for several.
    # The lm_head keeps float inputs, which torch's int8 kernel would round to bfloat16: the
    # reference holds its weights as the float32 values they stand for.
    wide = copy.deepcopy(dynamic_model)
    head = wide.lm_head
    wide.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=False)
    wide.lm_head.weight = torch.nn.Parameter(head.dequantized_weight())
    compiled = LlamaStep(dynamic_model, compiled_step=True)
    reference = LlamaStep(wide, compiled_step=False)
    assert compiled.compiled_step_off is None
    agree_over_passes(compiled, reference, slab(dynamic_model, 40, 6), slab_atol=1e-5)


def test_int8_activation_passes_of_several_tokens_equal_them_one_at_a_time(dynamic_model) -> None:
    # Each row is quantized and summed on its own, so a verify pass gives one-token steps' bits.
    assert_a_pass_equals_one_token_steps(dynamic_model)


def test_int8_activations_differ_from_weight_only_int8_by_their_rounding() -> None:
    # The same int8 weights with float activations: the logits move by about what rounding
    # activations to 8 bits moves them, not more (a wrong block scale or lane would).
    model = tiny_model("llama", tie_word_embeddings=False, **HALF_CHUNK_SHAPE)
    weight_only = copy.deepcopy(model)
    quantize_int8_weight_only(weight_only)
    quantize_int8_dynamic(model)
    keys, values = slab(model, 40, 9)
    ids = torch.tensor([5, 6, 7])
    dynamic = LlamaStep(model, compiled_step=True)(ids, 0, keys.clone(), values.clone())
    plain = LlamaStep(weight_only, compiled_step=True)(ids, 0, keys.clone(), values.clone())
    difference = (dynamic - plain).abs().max().item()
    assert 0 < difference < 0.05 * plain.abs().max().item()


def test_int8_activations_need_inputs_in_whole_blocks(model) -> None:
    step = LlamaStep(model, compiled_step=False)
    weight, bias = step.layers[0].q
    int8 = torch.zeros(weight.shape, dtype=torch.int8)
    scales = torch.ones(weight.shape[0])
    with pytest.raises(CompiledStepUnavailable, match=r"layer 0 q_proj quantizes its \d+ inputs"):
        llama_decode_cpu._projection(
            "layer 0 q_proj", (int8, bias, scales, 16), weight.shape[0], weight.shape[1], []
        )
    if weight.shape[1] % 32:
        with pytest.raises(CompiledStepUnavailable, match=r"only inputs that split"):
            llama_decode_cpu._projection(
                "layer 0 q_proj", (int8, bias, scales, 32), weight.shape[0], weight.shape[1], []
            )


def test_int8_activation_path_is_named() -> None:
    assert llama_decode_cpu.int8_activation_path() in ("avx512vnni", "avx2", "portable")
