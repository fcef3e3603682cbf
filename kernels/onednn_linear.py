"""Products x·Wᵀ (+ b) of several rows through oneDNN, for prefill, edits and verify passes on CPU.

torch's CPU build sends float32 `F.linear` to MKL, whose sgemm on this project's AMD EPYC (AVX2,
2 threads) runs at about half the speed of oneDNN's, which torch also ships and which picks its
kernels by instruction set rather than by vendor. Measured on the 0.5B shape's matrices (8
layers, 2 threads, weights as loaded, ms): 13 rows, an edit's pass, oneDNN 21.6 against
OpenBLAS 46.3; 64 rows 11.6 against MKL 25.6; a 2,048-row prefill chunk (2 layers) 317 against
634. For one row, a decode step's matrix-vector product, numpy's OpenBLAS reads the weights
fastest (kernels/blas_linear.py) and oneDNN is no better than MKL. oneDNN runs on torch's own
OpenMP workers, so it needs no wait policy of its own.

The entry point is torch's `mkldnn::_linear_pointwise`, the fused linear that torch's compiler
emits for CPU, called on the plain (dense) weight: nothing is repacked or copied. It is an
internal operator, so `onednn_linear_usable` checks once that it exists and agrees with
`torch.nn.functional.linear`, the reference (tests/kernels/test_onednn_linear.py compares the
two), and callers fall back to `F.linear` where it does not.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [n, in] · weight [out, in]ᵀ + bias [out] → [n, out], float32 CPU tensors; weight may be
    stored in either order. Raises ValueError, naming the bad tensor, for anything else."""
    for name, tensor in (("x", x), ("weight", weight), ("bias", bias)):
        if tensor is not None and (tensor.device.type != "cpu" or tensor.dtype != torch.float32):
            raise ValueError(
                f"onednn_linear multiplies float32 CPU tensors; {name} is {tensor.dtype} on "
                f"{tensor.device}"
            )
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"onednn_linear takes x [n, in] and weight [out, in]; got x {tuple(x.shape)} and "
            f"weight {tuple(weight.shape)}"
        )
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


@functools.cache
def onednn_linear_usable() -> bool:
    """Whether this torch build has the operator and it computes what F.linear does."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(5, 24, generator=generator)
        weight = torch.randn(40, 24, generator=generator)
        bias = torch.randn(40, generator=generator)
        with torch.inference_mode():
            out = onednn_linear(x, weight, bias)
    except (AttributeError, RuntimeError):
        return False
    return torch.allclose(out, F.linear(x, weight, bias), rtol=1e-4, atol=1e-4)
