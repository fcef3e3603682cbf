"""Kernels: the KV cache move for PIE edits, and BLAS products for decoding on CPU.

Cache layout: keys and values are each [num_layers, num_kv_heads, capacity, head_dim].
`shift_rotate_suffix` picks the fused Triton kernel on CUDA when triton is installed and the
torch pass that moves a few layers at a time (shift_rotate_cpu.py) everywhere else; the torch reference
(shift_rotate_reference.py) is what both are tested against. `blas_linear` (kernels/blas_linear.py) is x·Wᵀ through numpy's
BLAS, against `torch.nn.functional.linear`.
"""

from __future__ import annotations

import torch

from kernels.blas_linear import blas_linear, blas_products_usable
from kernels.shift_rotate import TRITON_AVAILABLE, shift_rotate_suffix_triton
from kernels.shift_rotate_checks import check_kv_cache, check_move
from kernels.shift_rotate_cpu import shift_rotate_suffix_cpu
from kernels.shift_rotate_reference import shift_rotate_suffix_reference

__all__ = [
    "TRITON_AVAILABLE",
    "blas_linear",
    "blas_products_usable",
    "copy_suffix",
    "shift_rotate_suffix",
    "shift_rotate_suffix_cpu",
    "shift_rotate_suffix_reference",
    "shift_rotate_suffix_triton",
]


def shift_rotate_suffix(
    keys: torch.Tensor,
    values: torch.Tensor,
    start: int,
    end: int,
    delta: int,
    inv_freq: torch.Tensor,
    *,
    rotary_dim: int | None = None,
    interleaved: bool = False,
) -> None:
    """Move slots [start, end) to [start+delta, end+delta) in place and rotate keys by delta.

    inv_freq holds the rotary frequencies (length rotary_dim // 2, rotary_dim defaulting to
    head_dim); interleaved selects GPT-J pairs (2i, 2i+1) over rotate_half pairs (i, i+half).
    Raises ValueError, with the cache untouched, on inconsistent arguments.
    """
    if keys.is_cuda and TRITON_AVAILABLE:
        impl = shift_rotate_suffix_triton
    else:
        impl = shift_rotate_suffix_cpu
    impl(keys, values, start, end, delta, inv_freq, rotary_dim=rotary_dim, interleaved=interleaved)


@torch.no_grad()
def copy_suffix(keys: torch.Tensor, values: torch.Tensor, start: int, end: int, delta: int) -> None:
    """Move slots [start, end) to [start+delta, end+delta) in place with no rotation.

    The baseline for benchmarks: the same bytes as `shift_rotate_suffix`, no arithmetic.
    """
    check_kv_cache(keys, values)
    start, end, delta = check_move(keys.shape[2], start, end, delta)
    if delta == 0 or start == end:
        return
    # torch refuses partially overlapping in-place copies; cloning the source first avoids them.
    for cache in (keys, values):
        cache[:, :, start + delta : end + delta] = cache[:, :, start:end].clone()
