"""Weights moved into huge pages (cache_engine/model/huge_pages.py) keep what they were."""

from __future__ import annotations

import pytest
import torch

from cache_engine.kv.llama_step import LlamaStep, store_weights_transposed
from cache_engine.model import huge_pages
from cache_engine.model.huge_pages import (
    HUGE_PAGE,
    huge_page_buffer,
    huge_pages_available,
    store_weights_in_huge_pages,
)
from cache_engine.model.quantization import quantize_int8_weight_only
from tests.model_factory import tiny_model

needs_huge_pages = pytest.mark.skipif(
    not huge_pages_available(), reason="no transparent huge pages on this machine"
)


def big_model(**overrides):
    # 8,192 x 64 float32 embeddings: exactly one huge page, tied to lm_head.
    return tiny_model("llama", vocab_size=8192, tie_word_embeddings=True, **overrides)


@needs_huge_pages
@pytest.mark.parametrize("transposed", [False, True])
def test_values_layout_and_ties_stay(transposed: bool) -> None:
    # An MLP of 64 x 8,192: its three matrices move too, transposed when asked.
    model = big_model(intermediate_size=8192)
    if transposed:
        store_weights_transposed(model)
    before = {
        name: (p.detach().clone(), p.stride(), p.data_ptr()) for name, p in model.named_parameters()
    }
    moved = store_weights_in_huge_pages(model)
    embed = model.model.embed_tokens.weight
    big = [p for p in model.parameters() if p.nbytes >= HUGE_PAGE]
    assert len(big) == 1 + 3 * model.config.num_hidden_layers
    assert moved == sum(p.nbytes for p in big)
    for name, parameter in model.named_parameters():
        values, stride, pointer = before[name]
        assert torch.equal(parameter, values) and parameter.stride() == stride
        # Only what fills a huge page moves, and it starts on one.
        moved_here = parameter.data_ptr() != pointer
        assert moved_here == any(parameter is p for p in big)
        assert not moved_here or parameter.data_ptr() % HUGE_PAGE == 0
    if transposed:
        assert not model.model.layers[0].mlp.up_proj.weight.is_contiguous()
    assert model.lm_head.weight is embed


@needs_huge_pages
def test_the_compiled_step_reads_the_moved_weights() -> None:
    model = big_model()
    step = LlamaStep(model)
    shape = (model.config.num_hidden_layers, step.num_kv_heads, 16, step.head_dim)
    keys, values = torch.zeros(shape), torch.zeros(shape)
    ids = torch.tensor([5, 7, 8191])
    before = step(ids, 0, keys.clone(), values.clone(), all_logits=True)
    store_weights_in_huge_pages(model)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(2.0)
    # The same step object follows the new storage (it rebuilds on a moved pointer), in C.
    after = step(ids, 0, keys.clone(), values.clone(), all_logits=True)
    assert step.compiled_step_off is None
    reference = LlamaStep(model, compiled_step=False)(ids, 0, keys, values, all_logits=True)
    torch.testing.assert_close(after, reference, atol=5e-5, rtol=1e-5)
    assert not torch.allclose(after, before)


@needs_huge_pages
def test_int8_weights_move_and_still_multiply_the_same() -> None:
    # Weight-only int8 keeps its weights in buffers: up_proj's 32,768 x 64 int8 is a huge page.
    model = big_model(intermediate_size=32768)
    quantize_int8_weight_only(model)
    step = LlamaStep(model)
    shape = (model.config.num_hidden_layers, step.num_kv_heads, 16, step.head_dim)
    ids = torch.tensor([5, 7, 8191])
    before = step(ids, 0, torch.zeros(shape), torch.zeros(shape), all_logits=True)
    weights = [layer.mlp.up_proj.weight for layer in model.model.layers]
    values = [w.clone() for w in weights]
    pointers = [w.data_ptr() for w in weights]
    assert store_weights_in_huge_pages(model) >= sum(w.nbytes for w in weights)
    for layer, value, pointer in zip(model.model.layers, values, pointers):
        moved = layer.mlp.up_proj.weight
        assert moved.dtype == torch.int8 and torch.equal(moved, value)
        assert moved.data_ptr() != pointer and moved.data_ptr() % HUGE_PAGE == 0
    after = step(ids, 0, torch.zeros(shape), torch.zeros(shape), all_logits=True)
    assert step.compiled_step_off is None
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_without_huge_pages_nothing_moves(monkeypatch, tmp_path) -> None:
    setting = tmp_path / "enabled"
    setting.write_text("always madvise [never]\n")
    monkeypatch.setattr(huge_pages, "THP_SETTING", setting)
    assert not huge_pages_available()
    model = big_model()
    pointers = [p.data_ptr() for p in model.parameters()]
    assert store_weights_in_huge_pages(model) == 0
    assert [p.data_ptr() for p in model.parameters()] == pointers
    monkeypatch.setattr(huge_pages, "THP_SETTING", tmp_path / "missing")
    assert not huge_pages_available()


def test_a_buffer_needs_a_positive_size() -> None:
    with pytest.raises(ValueError, match="not 0 bytes"):
        huge_page_buffer(0)
    buffer = huge_page_buffer(3 << 20)
    assert buffer.dtype == torch.uint8 and buffer.numel() == 3 << 20 and int(buffer.sum()) == 0
    assert buffer.data_ptr() % HUGE_PAGE == 0
