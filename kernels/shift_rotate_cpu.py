"""The PIE suffix move for CPU caches: shift slots and re-rotate keys, a few layers at a time.

The reference (shift_rotate_reference.py) moves the whole suffix of every layer at once: an
fp32 copy of all moved keys, a temporary per product, then strided writes, each a pass over
tens of megabytes (a 0.5B model's 2k-token suffix is 25 MB of keys). Here a group of layers
(about 2 MiB of keys) goes at a time, so the copy that makes overlapping moves safe stays in
cache, and the rotation is written straight into the destination (`out=` and `addcmul_`; fp16
and bf16 caches round once from an fp32 buffer of the group). A 0.5B-shaped cache (24 layers, 2
K/V heads, head_dim 64), 2 threads, 2,048 slots moved by 16: fp32 3.5 ms a move, what copying
the bytes costs, against 9.1 ms for the reference; bf16 2.8 against 8.8, twice its copy (`python
benchmarks/bench_kernels.py --threads 2 [--dtype fp32]`, benchmarks/results/kernels.json and
kernels_fp32.json). It is also what CUDA caches use when Triton is not installed.

The rotation's factors are the reference's (`rotation_table`); products are summed in a
different order (x·cos then + y·sin in place), so keys agree with the reference to an fp32
rounding, not bit for bit (tests/kernels/test_kernels.py).
"""

from __future__ import annotations

import torch

from kernels.shift_rotate_checks import check_shift_rotate_args
from kernels.shift_rotate_reference import rotary_pairs, rotation_table

# Layers are moved in groups whose fp32 keys take about this much: the two cores' L2 caches
# (1 MiB each here) hold a group's copy, and a short suffix is not split into many small ops.
CHUNK_BYTES = 2 * 2**20


@torch.no_grad()
def shift_rotate_suffix_cpu(
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
    """Move slots [start, end) to [start+delta, end+delta) in place; rotate keys by delta positions.

    The same contract as `shift_rotate_suffix_reference`: slots of the source range that the
    destination does not cover keep their old contents; bad arguments raise ValueError with the
    cache untouched.
    """
    start, end, delta, rot = check_shift_rotate_args(
        keys, values, start, end, delta, inv_freq, rotary_dim
    )
    if delta == 0 or start == end:
        return
    cos, sin = (factor.to(keys.device) for factor in rotation_table(inv_freq, delta))
    first, second = rotary_pairs(rot, interleaved)
    in_place = keys.dtype == torch.float32
    layer_bytes = keys.shape[1] * (end - start) * keys.shape[3] * 4
    step = max(1, CHUNK_BYTES // layer_bytes)
    for first_layer in range(0, keys.shape[0], step):
        layers = slice(first_layer, first_layer + step)
        layer_keys, layer_values = keys[layers], values[layers]
        source = layer_keys[:, :, start:end].to(torch.float32, copy=True)
        destination = layer_keys[:, :, start + delta : end + delta]
        # fp32 caches take the rotation directly; others round once, from an fp32 result.
        out = destination if in_place else torch.empty_like(source)
        x1, x2 = source[..., first], source[..., second]
        out1, out2 = out[..., first], out[..., second]
        torch.mul(x1, cos, out=out1).addcmul_(x2, sin, value=-1)
        torch.mul(x2, cos, out=out2).addcmul_(x1, sin)
        if in_place:
            destination[..., rot:] = source[..., rot:]
        else:
            out[..., rot:] = source[..., rot:]
            destination.copy_(out)
        layer_values[:, :, start + delta : end + delta] = layer_values[:, :, start:end].clone()
