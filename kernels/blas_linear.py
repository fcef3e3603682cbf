"""Products x·Wᵀ (+ b) of float32 CPU tensors through numpy's BLAS, for decoding and edits.

A decode step is a chain of matrix-vector products, bound by reading the weights. torch's CPU
build routes them to MKL, whose sgemv on AMD EPYC reads at 18-29 GB/s on 2 threads where a plain
sum streams at 45; numpy's wheels ship OpenBLAS, whose sgemv streams at 44-50 GB/s on the same
matrices (measured on this project's machine, `benchmarks/bench_decode.py`). For the rows of
an edit or a verify pass OpenBLAS's sgemm is faster too (0.5B shape, one forward: 12 tokens
137 ms against 213, 64 tokens 273 against 406, 512 tokens 2.03 s against 2.22), but not for a
2,048-token prefill chunk (10.6 s against 9.8; `BLAS_MAX_ROWS` in llama_step.py). numpy views
the torch storage, so nothing is copied.

The two thread pools take turns: torch's OpenMP workers must sleep between parallel regions
rather than spin, or they hold the cores OpenBLAS's threads need (a decode step of the default
model ran 5x slower). That is `OMP_WAIT_POLICY=PASSIVE`, read by libgomp when torch loads; the
language server sets it for models whose weights stream from memory
(cache_engine/model/cpu_threading.py), and `blas_products_usable` reports False without it.

The torch reference is `torch.nn.functional.linear`; tests/kernels/test_blas_linear.py compares
the two.
"""

from __future__ import annotations

import os

import numpy as np
import torch


def blas_products_usable() -> bool:
    """Whether products should go through numpy's BLAS in this process: torch's OpenMP
    workers were told to sleep when idle (see the module docstring)."""
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def check_cpu_float32_product(
    op: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> None:
    """Raise ValueError, naming `op` and the bad tensor, unless x [n, in], weight [out, in] and
    bias [out] (or None) are float32 CPU tensors that multiply."""
    for name, tensor in (("x", x), ("weight", weight), ("bias", bias)):
        if tensor is not None and (tensor.device.type != "cpu" or tensor.dtype != torch.float32):
            raise ValueError(
                f"{op} multiplies float32 CPU tensors; {name} is {tensor.dtype} on {tensor.device}"
            )
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{op} takes x [n, in] and weight [out, in]; got x {tuple(x.shape)} and "
            f"weight {tuple(weight.shape)}"
        )


def blas_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [n, in] · weight [out, in]ᵀ + bias [out] → [n, out], float32 CPU tensors.

    `weight` may be stored in either order (a transposed layout is a Fortran-ordered array to
    numpy). Raises ValueError, naming the bad tensor, for anything else."""
    check_cpu_float32_product("blas_linear", x, weight, bias)
    matrix = weight.detach().numpy()
    if x.shape[0] == 1:
        # A matrix-vector product: numpy hands it to sgemv, the streaming kernel.
        out = torch.from_numpy(np.matmul(matrix, x.detach()[0].numpy()))[None]
    else:
        out = torch.from_numpy(np.matmul(x.detach().numpy(), matrix.T))
    return out if bias is None else out.add_(bias)
