"""kernels/onednn_linear.py: products through oneDNN against torch's F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.onednn_linear import onednn_linear, onednn_linear_usable

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
