"""Pure torch reference for the PIE suffix move: shift slots and re-rotate keys by delta positions.

Cache layout: keys and values are [num_layers, num_kv_heads, capacity, head_dim].
"""

from __future__ import annotations

import torch

from kernels.shift_rotate_checks import check_shift_rotate_args


def rotation_table(inv_freq: torch.Tensor, delta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of delta * inv_freq, as fp32 vectors of length rotary_dim // 2.

    The angle is formed and evaluated in float64 so that large deltas lose no precision before
    the single rounding to fp32; every implementation takes its factors from here so they agree
    bit for bit on the rotation itself.
    """
    angle = inv_freq.to(torch.float64) * float(delta)
    return torch.cos(angle).to(torch.float32), torch.sin(angle).to(torch.float32)


def rotary_pairs(rotary_dim: int, interleaved: bool) -> tuple[slice, slice]:
    """The two halves of each rotated pair along head_dim: GPT-J pairs (2i, 2i+1) when
    interleaved, rotate_half pairs (i, i + rotary_dim/2) otherwise."""
    if interleaved:
        return slice(0, rotary_dim, 2), slice(1, rotary_dim, 2)
    half = rotary_dim // 2
    return slice(0, half), slice(half, rotary_dim)


def write_rotated_keys(
    dest: torch.Tensor,
    source: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rotary_dim: int,
    interleaved: bool,
) -> None:
    """Write fp32 `source` [..., head_dim] rotated into `dest`; dims past rotary_dim pass through.

    Writing each half straight into its destination slice avoids cat/stack temporaries, which
    dominate the cost on CPU. `source` must not alias `dest`.
    """
    first, second = rotary_pairs(rotary_dim, interleaved)
    x1, x2 = source[..., first], source[..., second]
    dest[..., first] = x1 * cos - x2 * sin
    dest[..., second] = x2 * cos + x1 * sin
    dest[..., rotary_dim:] = source[..., rotary_dim:]


@torch.no_grad()
def shift_rotate_suffix_reference(
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

    Slots of the source range that the destination does not cover keep their old contents.
    """
    start, end, delta, rot = check_shift_rotate_args(
        keys, values, start, end, delta, inv_freq, rotary_dim
    )
    if delta == 0 or start == end:
        return
    cos, sin = rotation_table(inv_freq, delta)
    # Copies taken before any write make overlapping source and destination safe.
    moved_keys = keys[:, :, start:end].to(torch.float32, copy=True)
    moved_values = values[:, :, start:end].clone()
    write_rotated_keys(
        keys[:, :, start + delta : end + delta], moved_keys, cos, sin, rot, interleaved
    )
    values[:, :, start + delta : end + delta] = moved_values
