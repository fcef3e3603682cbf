"""The static-shape decode step (decode_graph.py) against the lean step, and CUDA graphs.

On CPU the static step runs eagerly and must give the lean step's logits and write the same key
and value at its slot, and nothing elsewhere, whatever the slots after it hold. The graphed
path itself needs a GPU: those tests skip without one.
"""

from __future__ import annotations

import pytest
import torch

from cache_engine.kv.decode_graph import CudaGraphDecode, StaticDecodeStep
from cache_engine.kv.editable_cache import EditableCache
from cache_engine.kv.llama_step import LlamaStep
from tests.model_factory import tiny_model

MODELS = {
    "llama": lambda: tiny_model("llama"),
    "qwen2": lambda: tiny_model("qwen2"),
    "qwen3": lambda: tiny_model("qwen3", head_dim=16),
    "llama-biases-mha": lambda: tiny_model(
        "llama", attention_bias=True, mlp_bias=True, num_key_value_heads=4
    ),
}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def filled_slab(model, capacity: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A slab whose slots all hold values, as stale slots past the cursor do."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shape = (config.num_hidden_layers, config.num_key_value_heads, capacity, head_dim)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("slot", [0, 7, 39])
def test_static_step_equals_the_lean_step(name: str, slot: int) -> None:
    model = MODELS[name]()
    step = LlamaStep(model)
    keys, values = filled_slab(model, 40, seed=slot)
    lean_keys, lean_values = keys.clone(), values.clone()
    token = torch.tensor([11])
    expected = step(token, slot, lean_keys, lean_values)
    static = StaticDecodeStep(step, keys, values)
    static.token.copy_(token)
    static.slot.fill_(slot)
    logits = static.run()
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(keys, lean_keys, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(values, lean_values, atol=1e-6, rtol=1e-6)


def test_static_step_reads_the_slab_as_it_is_at_each_run() -> None:
    model = tiny_model("llama")
    step = LlamaStep(model)
    keys, values = filled_slab(model, 24, seed=1)
    static = StaticDecodeStep(step, keys, values)
    lean_keys, lean_values = keys.clone(), values.clone()
    for slot, token in enumerate([5, 9, 2, 2, 31]):
        expected = step(torch.tensor([token]), slot, lean_keys, lean_values)
        static.token.fill_(token)
        static.slot.fill_(slot)
        torch.testing.assert_close(static.run(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(keys, lean_keys, atol=1e-6, rtol=1e-6)


def test_static_step_rejects_a_slab_of_another_model() -> None:
    model = tiny_model("llama")
    keys, values = filled_slab(tiny_model("llama", num_hidden_layers=3), 8, seed=0)
    with pytest.raises(ValueError, match="not a slab of 2 layers"):
        StaticDecodeStep(LlamaStep(model), keys, values)


def test_cuda_graphs_name_the_device_they_need() -> None:
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="CUDA device, not cpu"):
        CudaGraphDecode(LlamaStep(model))
    with pytest.raises(ValueError, match="CUDA device, not cpu"):
        EditableCache(model, cuda_graphs=True)
    with pytest.raises(ValueError, match="'phi' runs on the transformers forward"):
        EditableCache(tiny_model("phi"), cuda_graphs=True)
    with pytest.raises(ValueError, match="forward='hf' was asked for"):
        EditableCache(model, forward="hf", cuda_graphs=True)


@needs_cuda
@pytest.mark.parametrize("name", sorted(MODELS))
def test_graphed_decoding_equals_eager_decoding(name: str) -> None:
    model = MODELS[name]().cuda()
    prompt = [(7 * k + 3) % 150 + 4 for k in range(30)]
    outputs = []
    for graphs in (False, True):
        cache = EditableCache(model, initial_capacity=40, cuda_graphs=graphs)
        cache.reset(prompt)
        # 40 new tokens grow the slab past its first capacity: the graph is recorded again.
        outputs.append(cache.generate(40, lambda token, log_prob: True))
        cache.insert(3, [9, 9])
        outputs.append(cache.generate(10, lambda token, log_prob: True))
        if graphs:
            assert cache._decode_graph is not None and cache._decode_graph.captures >= 2
    assert outputs[:2] == outputs[2:]


@needs_cuda
def test_a_graph_replays_what_the_lean_step_computes() -> None:
    model = tiny_model("qwen2").cuda()
    step = LlamaStep(model)
    keys, values = (t.cuda() for t in filled_slab(model, 32, seed=4))
    lean_keys, lean_values = keys.clone(), values.clone()
    graphed = CudaGraphDecode(step)
    for slot, token in enumerate([3, 8, 8, 120]):
        expected = step(torch.tensor([token], device="cuda"), slot, lean_keys, lean_values)
        logits = graphed(torch.tensor([token], device="cuda"), slot, keys, values)
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert graphed.captures == 1
    torch.testing.assert_close(keys, lean_keys, atol=1e-5, rtol=1e-5)
