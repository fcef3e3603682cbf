"""kernels/blas_linear.py: products through numpy's BLAS against torch's F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.blas_linear import blas_linear


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("layout", ["as stored", "transposed"])
@pytest.mark.parametrize("rows", [1, 3, 40])
@pytest.mark.parametrize("shape", [(5, 7), (96, 64), (1000, 24)])
def test_matches_the_torch_reference(
    shape: tuple[int, int], rows: int, layout: str, bias: bool
) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    out_features, in_features = shape
    weight = torch.randn(out_features, in_features, generator=generator)
    if layout == "transposed":
        # The [out, in] values over [in, out] storage, as store_weights_transposed leaves them.
        weight = weight.t().contiguous().t()
    b = torch.randn(out_features, generator=generator) if bias else None
    x = torch.randn(rows, in_features, generator=generator)
    expected = F.linear(x, weight, b)
    got = blas_linear(x, weight, b)
    assert got.shape == expected.shape == (rows, out_features)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_reads_strided_inputs_and_parameters() -> None:
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(16, 8)  # a Parameter that requires grad
    wide = torch.randn(3, 32, generator=generator)
    x = wide[1:2, ::2]  # one row, every other column: not contiguous
    with torch.inference_mode():
        torch.testing.assert_close(
            blas_linear(x, layer.weight, layer.bias), layer(x), atol=1e-5, rtol=1e-5
        )


def test_refuses_what_it_cannot_multiply() -> None:
    weight = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"x is torch.bfloat16"):
        blas_linear(torch.randn(1, 3, dtype=torch.bfloat16), weight, None)
    with pytest.raises(ValueError, match=r"weight is torch.float64"):
        blas_linear(torch.randn(1, 3), weight.double(), None)
    with pytest.raises(ValueError, match=r"x \(3,\)"):
        blas_linear(torch.randn(3), weight, None)
    with pytest.raises(ValueError, match=r"weight \(4, 3\)"):
        blas_linear(torch.randn(1, 5), weight, None)
