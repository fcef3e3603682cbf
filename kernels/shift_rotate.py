"""Fused Triton kernel for the PIE suffix move: shift K and V slots, re-rotate K, one pass.

Grid: one program per (layer, kv head, tensor), the last axis choosing keys (rotate) or values
(plain move). Programs touch disjoint memory, so the only hazard is inside one program, where
source and destination rows overlap whenever |delta| < end - start. Each program therefore walks
the token range in blocks in the safe direction (from the end when delta > 0, from the start
when delta < 0) and loads a whole block before storing it: every slot a store overwrites has
already been read, either in this block or in an earlier one.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch

from kernels.shift_rotate_checks import check_shift_rotate_args
from kernels.shift_rotate_reference import rotation_table

try:
    import triton
    import triton.language as tl
except ImportError:  # Machines without triton still get the torch reference.
    triton = None
    tl = None

TRITON_AVAILABLE: bool = triton is not None

# Rows of one block: enough elements per iteration to keep memory busy, few enough for registers.
_ELEMENTS_PER_BLOCK = 4096
_NUM_WARPS = 4

if TRITON_AVAILABLE:

    def _shift_rotate_kernel(
        k_ptr,
        v_ptr,
        cos_ptr,
        sin_ptr,
        num_heads,
        start,
        end,
        delta,
        first_block,
        block_step,
        num_blocks,
        k_stride_l,
        k_stride_h,
        k_stride_t,
        k_stride_d,
        v_stride_l,
        v_stride_h,
        v_stride_t,
        v_stride_d,
        HEAD_DIM: tl.constexpr,
        ROTARY_DIM: tl.constexpr,
        INTERLEAVED: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        pid = tl.program_id(0)
        layer = (pid // num_heads).to(tl.int64)
        head = (pid % num_heads).to(tl.int64)
        rows = tl.arange(0, BLOCK_T)
        if tl.program_id(1) == 1:
            # Values: a bit-exact move, no arithmetic and so no fp32 round trip either.
            v_base = v_ptr + layer * v_stride_l + head * v_stride_h
            cols = tl.arange(0, BLOCK_D)
            col_mask = cols < HEAD_DIM
            col_offs = cols.to(tl.int64) * v_stride_d
            # int64: delta times a token stride can pass 2**31 in permuted cache layouts.
            v_shift = delta.to(tl.int64) * v_stride_t
            # num_stages=1: a pipelined loop would issue the next block's loads ahead of this
            # block's stores; the walk order only holds if they stay in program order.
            for b in tl.range(0, num_blocks, num_stages=1):
                tok = first_block + b * block_step + rows
                mask = ((tok >= start) & (tok < end))[:, None] & col_mask[None, :]
                src = v_base + tok.to(tl.int64)[:, None] * v_stride_t + col_offs[None, :]
                block = tl.load(src, mask=mask)
                # Other threads of this program store over slots this block is still reading.
                tl.debug_barrier()
                tl.store(src + v_shift, block, mask=mask)
        else:
            k_base = k_ptr + layer * k_stride_l + head * k_stride_h
            half = tl.arange(0, BLOCK_R)
            half_mask = half < ROTARY_DIM // 2
            if INTERLEAVED:
                dim1 = 2 * half
                dim2 = 2 * half + 1
            else:
                dim1 = half
                dim2 = half + ROTARY_DIM // 2
            offs1 = dim1.to(tl.int64) * k_stride_d
            offs2 = dim2.to(tl.int64) * k_stride_d
            cos = tl.load(cos_ptr + half, mask=half_mask, other=1.0).to(tl.float32)
            sin = tl.load(sin_ptr + half, mask=half_mask, other=0.0).to(tl.float32)
            tail = ROTARY_DIM + tl.arange(0, BLOCK_P)
            tail_offs = tail.to(tl.int64) * k_stride_d
            k_shift = delta.to(tl.int64) * k_stride_t
            for b in tl.range(0, num_blocks, num_stages=1):
                tok = first_block + b * block_step + rows
                row_mask = (tok >= start) & (tok < end)
                row_offs = tok.to(tl.int64)[:, None] * k_stride_t
                mask = row_mask[:, None] & half_mask[None, :]
                # fp32 right after the load: the rotation is fp32, rounded once on the store.
                x1 = tl.load(k_base + row_offs + offs1[None, :], mask=mask).to(tl.float32)
                x2 = tl.load(k_base + row_offs + offs2[None, :], mask=mask).to(tl.float32)
                # Dims past rotary_dim (partial rotary) move unchanged.
                tail_mask = row_mask[:, None] & (tail < HEAD_DIM)[None, :]
                tail_src = k_base + row_offs + tail_offs[None, :]
                if ROTARY_DIM < HEAD_DIM:
                    tail_block = tl.load(tail_src, mask=tail_mask)
                tl.debug_barrier()
                y1 = x1 * cos[None, :] - x2 * sin[None, :]
                y2 = x2 * cos[None, :] + x1 * sin[None, :]
                dst = k_base + row_offs + k_shift
                tl.store(dst + offs1[None, :], y1.to(k_ptr.dtype.element_ty), mask=mask)
                tl.store(dst + offs2[None, :], y2.to(k_ptr.dtype.element_ty), mask=mask)
                if ROTARY_DIM < HEAD_DIM:
                    tl.store(tail_src + k_shift, tail_block, mask=tail_mask)


# Per-edit scalars vary from call to call; specializing on them would only add recompiles.
_DYNAMIC_ARGS: list[str] = ["start", "end", "delta", "first_block", "block_step", "num_blocks"]


@functools.cache
def _compiled_kernel() -> Any:
    """Decorate on first use: triton reads TRITON_INTERPRET when jit runs, not at launch.

    So the interpreter flag has to be set before the first Triton call, not before
    `import kernels`, which other modules may do early.
    """
    if not TRITON_AVAILABLE:
        raise RuntimeError("triton is not installed")
    return triton.jit(_shift_rotate_kernel, do_not_specialize=_DYNAMIC_ARGS)


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _walk_plan(start: int, end: int, delta: int, block_t: int) -> tuple[int, int, int]:
    """(first block's first slot, step between blocks, block count) for the safe walk order."""
    num_blocks = -(-(end - start) // block_t)
    if delta > 0:
        # Destination lies above the source: finish the top rows before their slots are reused.
        return end - block_t, -block_t, num_blocks
    return start, block_t, num_blocks


@torch.no_grad()
def shift_rotate_suffix_triton(
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
    """Triton version of `shift_rotate_suffix_reference`: same arguments, same result."""
    start, end, delta, rot = check_shift_rotate_args(
        keys, values, start, end, delta, inv_freq, rotary_dim
    )
    if delta == 0 or start == end:
        return
    kernel = _compiled_kernel()
    num_layers, num_heads, _, head_dim = keys.shape
    cos, sin = rotation_table(inv_freq, delta)
    block_d = _next_pow2(head_dim)
    block_t = max(1, _ELEMENTS_PER_BLOCK // block_d)
    first_block, block_step, num_blocks = _walk_plan(start, end, delta, block_t)
    grid = (num_layers * num_heads, 2)
    # Triton launches on the current CUDA device, which need not be the cache's.
    device_guard = torch.cuda.device(keys.device) if keys.is_cuda else contextlib.nullcontext()
    with device_guard:
        kernel[grid](
            keys,
            values,
            cos,
            sin,
            num_heads,
            start,
            end,
            delta,
            first_block,
            block_step,
            num_blocks,
            *keys.stride(),
            *values.stride(),
            HEAD_DIM=head_dim,
            ROTARY_DIM=rot,
            INTERLEAVED=bool(interleaved),
            BLOCK_T=block_t,
            BLOCK_D=block_d,
            BLOCK_R=_next_pow2(rot // 2),
            BLOCK_P=_next_pow2(max(1, head_dim - rot)),
            num_warps=_NUM_WARPS,
            num_stages=1,
            # Unfused mul/add rounds like the torch reference, so CUDA and reference agree.
            enable_fp_fusion=False,
        )
