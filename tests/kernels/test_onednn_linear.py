"""kernels/onednn_linear.py: products through oneDNN against torch's F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.onednn_linear import (
    onednn_linear,
    onednn_linear_trainable,
    onednn_linear_usable,
    route_linears_through_onednn,
)

needs_onednn = pytest.mark.skipif(not onednn_linear_usable(), reason="torch without oneDNN")


def test_this_torch_build_has_it() -> None:
    # The CPU build the project pins ships oneDNN; a regression here would silently slow every
    # prefill and edit back to MKL, so it is a failure, not a skip, on the pinned build.
    if torch.__version__.startswith("2.13.0") and "+cpu" in torch.__version__:
        assert onednn_linear_usable()


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("layout", ["as stored", "transposed"])
@pytest.mark.parametrize("rows", [1, 2, 13, 300])
@pytest.mark.parametrize("shape", [(5, 7), (96, 64), (1000, 24)])
def test_matches_the_torch_reference(
    shape: tuple[int, int], rows: int, layout: str, bias: bool
) -> None:
    generator = torch.Generator().manual_seed(sum(shape) + rows)
    out_features, in_features = shape
    weight = torch.randn(out_features, in_features, generator=generator)
    if layout == "transposed":
        weight = weight.t().contiguous().t()
    b = torch.randn(out_features, generator=generator) if bias else None
    x = torch.randn(rows, in_features, generator=generator)
    expected = F.linear(x, weight, b)
    with torch.inference_mode():
        got = onednn_linear(x, weight, b)
    assert got.shape == expected.shape == (rows, out_features)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_reads_strided_inputs_and_parameters() -> None:
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(16, 8)  # a Parameter that requires grad
    wide = torch.randn(3, 32, generator=generator)
    x = wide[:, ::2]  # every other column: not contiguous
    with torch.inference_mode():
        torch.testing.assert_close(
            onednn_linear(x, layer.weight, layer.bias), layer(x), atol=1e-5, rtol=1e-5
        )


def test_refuses_what_it_cannot_multiply() -> None:
    weight = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"x is torch.bfloat16"):
        onednn_linear(torch.randn(2, 3, dtype=torch.bfloat16), weight, None)
    with pytest.raises(ValueError, match=r"bias is torch.float64"):
        onednn_linear(torch.randn(2, 3), weight, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x \(3,\)"):
        onednn_linear(torch.randn(3), weight, None)
    with pytest.raises(ValueError, match=r"weight \(4, 3\)"):
        onednn_linear(torch.randn(2, 5), weight, None)


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
def test_gradients_match_the_torch_reference(bias: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, 24, generator=generator, requires_grad=True)
    weight = torch.randn(40, 24, generator=generator, requires_grad=True)
    b = torch.randn(40, generator=generator, requires_grad=True) if bias else None
    upstream = torch.randn(2, 7, 40, generator=generator)
    got = onednn_linear_trainable(x, weight, b)
    got.backward(upstream)
    grads = [t.grad.clone() for t in (x, weight, b) if t is not None]
    for t in (x, weight, b):
        if t is not None:
            t.grad = None
    expected = F.linear(x, weight, b)
    expected.backward(upstream)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for mine, reference in zip(grads, [t.grad for t in (x, weight, b) if t is not None]):
        torch.testing.assert_close(mine, reference, atol=1e-4, rtol=1e-5)


@needs_onednn
def test_a_routed_model_trains_as_the_original() -> None:
    from tests.model_factory import tiny_model

    # Tied, as the default model is: lm_head shares the embedding.
    original = tiny_model("llama", seed=5, tie_word_embeddings=True)
    routed = tiny_model("llama", seed=5, tie_word_embeddings=True)
    assert route_linears_through_onednn(routed) == 2 * 7 + 1  # 7 per layer and lm_head
    assert all(type(m) is not torch.nn.Linear for m in routed.modules())
    assert routed.state_dict().keys() == original.state_dict().keys()
    ids = torch.randint(0, 160, (2, 33), generator=torch.Generator().manual_seed(1))
    losses = []
    for model in (original, routed):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            logits = model(input_ids=ids[:, :-1]).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    for (name, a), b in zip(original.state_dict().items(), routed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)


@needs_onednn
def test_autocast_still_casts_a_routed_layer() -> None:
    layer = torch.nn.Linear(24, 40)
    route_linears_through_onednn(layer)
    x = torch.randn(3, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    assert layer(x).dtype == torch.float32
