"""Argument validation shared by every shift/rotate implementation.

All checks run before any write, so a call that raises leaves the cache untouched.
"""

from __future__ import annotations

import operator

import torch

SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)


def _as_int(name: str, value: object) -> int:
    # bool is an int subclass but passing one is always a bug at the call site.
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None


def _byte_span(tensor: torch.Tensor) -> tuple[int, int]:
    begin = tensor.data_ptr()
    return begin, begin + tensor.numel() * tensor.element_size()


def check_kv_cache(keys: torch.Tensor, values: torch.Tensor) -> None:
    """Check that keys/values form one [layers, kv_heads, capacity, head_dim] cache pair."""
    if keys.dim() != 4:
        raise ValueError(
            "keys must be 4-D [layers, kv_heads, capacity, head_dim], "
            f"got shape {tuple(keys.shape)}"
        )
    if values.shape != keys.shape:
        raise ValueError(
            f"values shape {tuple(values.shape)} differs from keys shape {tuple(keys.shape)}"
        )
    if keys.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"keys dtype {keys.dtype} is not one of {SUPPORTED_DTYPES}")
    if values.dtype != keys.dtype:
        raise ValueError(f"values dtype {values.dtype} differs from keys dtype {keys.dtype}")
    if values.device != keys.device:
        raise ValueError(f"values device {values.device} differs from keys device {keys.device}")
    if keys.numel() == 0:
        return
    # The same buffer passed twice would be moved twice; contiguous spans can be compared exactly,
    # strided views (e.g. one [layers, 2, ...] buffer) only by base pointer.
    if keys.data_ptr() == values.data_ptr():
        raise ValueError("keys and values share memory (same data pointer)")
    if keys.is_contiguous() and values.is_contiguous():
        k_begin, k_end = _byte_span(keys)
        v_begin, v_end = _byte_span(values)
        if k_begin < v_end and v_begin < k_end:
            raise ValueError("keys and values share memory (overlapping buffers)")


def check_move(capacity: int, start: object, end: object, delta: object) -> tuple[int, int, int]:
    """Check that slots [start, end) can move to [start+delta, end+delta) within capacity."""
    start_i = _as_int("start", start)
    end_i = _as_int("end", end)
    delta_i = _as_int("delta", delta)
    if not 0 <= start_i <= end_i <= capacity:
        raise ValueError(
            f"need 0 <= start <= end <= capacity, got start={start_i}, end={end_i}, "
            f"capacity={capacity}"
        )
    if start_i + delta_i < 0 or end_i + delta_i > capacity:
        raise ValueError(
            f"delta={delta_i} moves [{start_i}, {end_i}) to [{start_i + delta_i}, "
            f"{end_i + delta_i}), outside [0, capacity={capacity})"
        )
    return start_i, end_i, delta_i


def check_rotary(
    inv_freq: torch.Tensor, rotary_dim: object, head_dim: int, device: torch.device
) -> int:
    """Check the RoPE description and return the effective rotary_dim (None means head_dim)."""
    rot = head_dim if rotary_dim is None else _as_int("rotary_dim", rotary_dim)
    if rot <= 0 or rot % 2 != 0 or rot > head_dim:
        raise ValueError(f"rotary_dim={rot} must be a positive even number <= head_dim={head_dim}")
    if not isinstance(inv_freq, torch.Tensor):
        raise TypeError(f"inv_freq must be a torch.Tensor, got {type(inv_freq).__name__}")
    if inv_freq.dim() != 1 or inv_freq.shape[0] != rot // 2:
        raise ValueError(
            f"inv_freq shape {tuple(inv_freq.shape)} must be ({rot // 2},) = (rotary_dim // 2,)"
        )
    if not inv_freq.is_floating_point():
        raise ValueError(f"inv_freq dtype {inv_freq.dtype} is not a floating point type")
    if inv_freq.device != device:
        raise ValueError(f"inv_freq device {inv_freq.device} differs from keys device {device}")
    return rot


def check_shift_rotate_args(
    keys: torch.Tensor,
    values: torch.Tensor,
    start: object,
    end: object,
    delta: object,
    inv_freq: torch.Tensor,
    rotary_dim: object,
) -> tuple[int, int, int, int]:
    """Validate a shift-and-rotate call; return (start, end, delta, rotary_dim) as ints."""
    check_kv_cache(keys, values)
    start_i, end_i, delta_i = check_move(keys.shape[2], start, end, delta)
    rot = check_rotary(inv_freq, rotary_dim, keys.shape[3], keys.device)
    return start_i, end_i, delta_i, rot
