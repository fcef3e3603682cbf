"""Tests for kernels/: the Triton shift-and-rotate kernel and the layer-at-a-time CPU pass against
their torch reference, and the reference against an independent float64 RoPE oracle.

The Triton kernel runs under the interpreter on CPU tensors. Triton reads TRITON_INTERPRET when
a kernel is jit-decorated; kernels/ decorates on first launch, and this module sets the flag
before importing anything, so the flag is in place whichever test module imports torch or
kernels first.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import kernels
from kernels import (
    copy_suffix,
    shift_rotate_suffix,
    shift_rotate_suffix_cpu,
    shift_rotate_suffix_reference,
    shift_rotate_suffix_triton,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
ShiftRotate = Callable[..., None]

needs_triton = pytest.mark.skipif(not kernels.TRITON_AVAILABLE, reason="triton not installed")
IMPL_BY_NAME: dict[str, ShiftRotate] = {
    "reference": shift_rotate_suffix_reference,
    "cpu": shift_rotate_suffix_cpu,
    "triton": shift_rotate_suffix_triton,
}

# Relative tolerance of one storage ulp: the interpreter rounds fp32 -> bf16 toward zero while
# torch rounds to nearest even, so bf16 results may differ by one ulp.
RTOL: dict[torch.dtype, float] = {
    torch.float32: 1e-6,
    torch.float16: 2.0**-10,
    torch.bfloat16: 2.0**-7,
}
ATOL: dict[torch.dtype, float] = {torch.float32: 1e-6, torch.float16: 1e-7, torch.bfloat16: 1e-7}


def make_inv_freq(rotary_dim: int, base: float = 10000.0) -> torch.Tensor:
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim
    return 1.0 / (base**exponents)


def random_cache(
    num_layers: int,
    num_heads: int,
    capacity: int,
    head_dim: int,
    dtype: torch.dtype,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (num_layers, num_heads, capacity, head_dim)
    keys = torch.randn(shape, generator=gen).mul(3.0).to(dtype)
    values = torch.randn(shape, generator=gen).mul(3.0).to(dtype)
    return keys, values


def assert_keys_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    dtype = expected.dtype
    torch.testing.assert_close(actual.float(), expected.float(), rtol=RTOL[dtype], atol=ATOL[dtype])


def run_both(
    keys: torch.Tensor,
    values: torch.Tensor,
    move: tuple[int, int, int],
    rotary_dim: int | None,
    interleaved: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run reference and Triton on copies of one cache; return (ref K, ref V, tri K, tri V)."""
    start, end, delta = move
    inv_freq = make_inv_freq(rotary_dim or keys.shape[-1])
    ref_k, ref_v = keys.clone(), values.clone()
    tri_k, tri_v = keys.clone(), values.clone()
    opts = {"rotary_dim": rotary_dim, "interleaved": interleaved}
    shift_rotate_suffix_reference(ref_k, ref_v, start, end, delta, inv_freq, **opts)
    shift_rotate_suffix_triton(tri_k, tri_v, start, end, delta, inv_freq, **opts)
    return ref_k, ref_v, tri_k, tri_v


# --- Triton kernel against the reference -----------------------------------------------------

CAPACITY = 80
# (start, end, delta): overlapping and disjoint moves both ways, odd lengths, and lengths above
# the kernel's token block (64 rows at head_dim 64, 32 at 128) so the walk crosses blocks.
MOVES: list[tuple[int, int, int]] = [
    (3, 36, 5),  # length 33, overlapping, right
    (9, 42, -4),  # length 33, overlapping, left
    (10, 17, 20),  # length 7, disjoint, right
    (50, 57, -45),  # length 7, disjoint, left
    (12, 19, -7),  # |delta| == length
    (79, 80, -79),  # length 1, from the last slot to slot 0
    (2, 72, 7),  # length 70, several blocks, right
    (8, 77, -1),  # length 69, several blocks, left by one slot
]
LAYOUTS: list[tuple[str, int, int | None, bool]] = [
    # (name, head_dim, rotary_dim, interleaved)
    ("half-64", 64, None, False),
    ("interleaved-128", 128, None, True),
    ("partial-half-128x32", 128, 32, False),
    ("partial-interleaved-96x24", 96, 24, True),
]
SHAPES: list[tuple[int, int]] = [(1, 1), (3, 2), (1, 4), (3, 4)]  # (num_layers, num_kv_heads)
DTYPES: list[torch.dtype] = [torch.float32, torch.float16, torch.bfloat16]


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout[0])
@pytest.mark.parametrize("move", MOVES, ids=str)
def test_triton_matches_reference(
    dtype: torch.dtype,
    layout: tuple[str, int, int | None, bool],
    move: tuple[int, int, int],
) -> None:
    _, head_dim, rotary_dim, interleaved = layout
    # Cycle the head counts across cases rather than multiplying the case count by four.
    case = MOVES.index(move) + LAYOUTS.index(layout) + DTYPES.index(dtype)
    num_layers, num_heads = SHAPES[case % len(SHAPES)]
    keys, values = random_cache(num_layers, num_heads, CAPACITY, head_dim, dtype, seed=case)
    ref_k, ref_v, tri_k, tri_v = run_both(keys, values, move, rotary_dim, interleaved)
    assert_keys_close(tri_k, ref_k)
    assert torch.equal(tri_v, ref_v)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout[0])
@pytest.mark.parametrize("move", MOVES, ids=str)
def test_cpu_pass_matches_reference(
    dtype: torch.dtype,
    layout: tuple[str, int, int | None, bool],
    move: tuple[int, int, int],
) -> None:
    _, head_dim, rotary_dim, interleaved = layout
    case = MOVES.index(move) + LAYOUTS.index(layout) + DTYPES.index(dtype)
    num_layers, num_heads = SHAPES[case % len(SHAPES)]
    keys, values = random_cache(num_layers, num_heads, CAPACITY, head_dim, dtype, seed=case)
    start, end, delta = move
    inv_freq = make_inv_freq(rotary_dim or head_dim)
    opts = {"rotary_dim": rotary_dim, "interleaved": interleaved}
    ref_k, ref_v = keys.clone(), values.clone()
    shift_rotate_suffix_reference(ref_k, ref_v, start, end, delta, inv_freq, **opts)
    cpu_k, cpu_v = keys.clone(), values.clone()
    shift_rotate_suffix_cpu(cpu_k, cpu_v, start, end, delta, inv_freq, **opts)
    assert_keys_close(cpu_k, ref_k)
    assert torch.equal(cpu_v, ref_v)
    # Dims past rotary_dim and every slot outside the destination are copied, not computed.
    rot = rotary_dim or head_dim
    assert torch.equal(cpu_k[..., rot:], ref_k[..., rot:])
    outside = torch.ones(CAPACITY, dtype=torch.bool)
    outside[start + delta : end + delta] = False
    assert torch.equal(cpu_k[:, :, outside], ref_k[:, :, outside])


@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_triton_matches_reference_per_shape(shape: tuple[int, int], head_dim: int) -> None:
    num_layers, num_heads = shape
    keys, values = random_cache(num_layers, num_heads, 48, head_dim, torch.bfloat16, seed=7)
    ref_k, ref_v, tri_k, tri_v = run_both(keys, values, (4, 37, 6), None, False)
    assert_keys_close(tri_k, ref_k)
    assert torch.equal(tri_v, ref_v)
    # Each (layer, head) must get its own rotation, not a neighbour's rows.
    assert not torch.equal(tri_k[:, :, 10:43], keys[:, :, 4:37])


@needs_triton
def test_triton_large_delta_uses_same_angles() -> None:
    # Angles near 4000 rad: an fp32 product would already disagree in the low bits.
    keys, values = random_cache(1, 1, 4100, 64, torch.float32, seed=3)
    ref_k, ref_v, tri_k, tri_v = run_both(keys, values, (2, 5, 4090), None, False)
    torch.testing.assert_close(tri_k, ref_k, rtol=1e-6, atol=1e-6)
    assert torch.equal(tri_v, ref_v)


@needs_triton
def test_triton_strided_views() -> None:
    # One [layers, 2, heads, capacity, head_dim] buffer: keys/values are non-contiguous views.
    gen = torch.Generator().manual_seed(11)
    cache = torch.randn(2, 2, 2, 40, 64, generator=gen)
    inv_freq = make_inv_freq(64)
    ref_k, ref_v = cache[:, 0].clone(), cache[:, 1].clone()
    shift_rotate_suffix_reference(ref_k, ref_v, 5, 30, 3, inv_freq)
    shift_rotate_suffix_triton(cache[:, 0], cache[:, 1], 5, 30, 3, inv_freq)
    torch.testing.assert_close(cache[:, 0], ref_k, rtol=1e-6, atol=1e-6)
    assert torch.equal(cache[:, 1], ref_v)


@needs_triton
def test_triton_runs_under_interpreter() -> None:
    from triton.runtime.interpreter import InterpretedFunction

    from kernels.shift_rotate import _compiled_kernel

    assert isinstance(_compiled_kernel(), InterpretedFunction)


# --- Reference against an independent oracle -------------------------------------------------


def rope_float64(
    x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, interleaved: bool
) -> torch.Tensor:
    """HF-style RoPE in float64: rotate_half (Llama) or rotate_every_two (GPT-J) on the first
    2 * len(inv_freq) dims of x [..., seq, head_dim] at the given positions."""
    rotary_dim = 2 * inv_freq.shape[0]
    freqs = positions.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :]
    x = x.to(torch.float64)
    rot, tail = x[..., :rotary_dim], x[..., rotary_dim:]
    if interleaved:
        cos = freqs.cos().repeat_interleave(2, dim=-1)
        sin = freqs.sin().repeat_interleave(2, dim=-1)
        pairs = torch.stack((-rot[..., 1::2], rot[..., 0::2]), dim=-1)
        turned = pairs.flatten(-2)
    else:
        cos = torch.cat((freqs.cos(), freqs.cos()), dim=-1)
        sin = torch.cat((freqs.sin(), freqs.sin()), dim=-1)
        half = rotary_dim // 2
        turned = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat((rot * cos + turned * sin, tail), dim=-1)


@pytest.mark.parametrize(
    ("head_dim", "rotary_dim", "interleaved"),
    [(64, None, False), (64, None, True), (128, 32, False), (96, 24, True)],
)
@pytest.mark.parametrize("move", [(3, 36, 5), (9, 42, -4), (10, 17, 20), (50, 57, -45)], ids=str)
def test_reference_matches_rope_at_new_position(
    head_dim: int, rotary_dim: int | None, interleaved: bool, move: tuple[int, int, int]
) -> None:
    start, end, delta = move
    num_layers, num_heads, capacity = 2, 2, CAPACITY
    rot = rotary_dim or head_dim
    inv_freq = make_inv_freq(rot)
    gen = torch.Generator().manual_seed(5)
    raw = torch.randn(num_layers, num_heads, capacity, head_dim, generator=gen, dtype=torch.float64)
    slots = torch.arange(capacity)
    keys = rope_float64(raw, slots, inv_freq, interleaved).to(torch.float32)
    values = torch.randn(num_layers, num_heads, capacity, head_dim, generator=gen)
    old_values = values.clone()

    shift_rotate_suffix_reference(
        keys, values, start, end, delta, inv_freq, rotary_dim=rotary_dim, interleaved=interleaved
    )

    moved = slots[start:end]
    expected = rope_float64(raw[:, :, start:end], moved + delta, inv_freq, interleaved)
    torch.testing.assert_close(
        keys[:, :, start + delta : end + delta].double(), expected, rtol=0, atol=2e-5
    )
    assert torch.equal(values[:, :, start + delta : end + delta], old_values[:, :, start:end])


@pytest.mark.parametrize("impl", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("move", [(3, 36, 5), (9, 42, -4), (40, 41, 39), (79, 80, -79)], ids=str)
def test_slots_outside_destination_untouched(
    impl: str, dtype: torch.dtype, move: tuple[int, int, int]
) -> None:
    if impl == "triton" and not kernels.TRITON_AVAILABLE:
        pytest.skip("triton not installed")
    fn = IMPL_BY_NAME[impl]
    start, end, delta = move
    keys, values = random_cache(2, 2, CAPACITY, 64, dtype, seed=13)
    new_k, new_v = keys.clone(), values.clone()
    fn(new_k, new_v, start, end, delta, make_inv_freq(64))
    outside = torch.ones(CAPACITY, dtype=torch.bool)
    outside[start + delta : end + delta] = False
    # Uncovered source slots keep their stale contents too: the caller overwrites them.
    assert torch.equal(new_k[:, :, outside], keys[:, :, outside])
    assert torch.equal(new_v[:, :, outside], values[:, :, outside])


@pytest.mark.parametrize("impl", ["reference", "cpu", "triton"])
@pytest.mark.parametrize(("rotary_dim", "interleaved"), [(None, False), (None, True), (32, False)])
def test_rotate_forward_and_back_is_identity(
    impl: str, rotary_dim: int | None, interleaved: bool
) -> None:
    if impl == "triton" and not kernels.TRITON_AVAILABLE:
        pytest.skip("triton not installed")
    fn = IMPL_BY_NAME[impl]
    keys, values = random_cache(2, 2, CAPACITY, 64, torch.float32, seed=17)
    new_k, new_v = keys.clone(), values.clone()
    inv_freq = make_inv_freq(rotary_dim or 64)
    opts = {"rotary_dim": rotary_dim, "interleaved": interleaved}
    fn(new_k, new_v, 10, 60, 13, inv_freq, **opts)
    fn(new_k, new_v, 23, 73, -13, inv_freq, **opts)
    torch.testing.assert_close(new_k[:, :, 10:60], keys[:, :, 10:60], rtol=1e-5, atol=1e-5)
    assert torch.equal(new_v[:, :, 10:60], values[:, :, 10:60])


# --- Dispatch, copy baseline, no-ops -------------------------------------------------------


def test_dispatch_on_cpu_uses_the_cpu_pass() -> None:
    keys, values = random_cache(2, 2, 48, 64, torch.bfloat16, seed=19)
    ref_k, ref_v = keys.clone(), values.clone()
    inv_freq = make_inv_freq(64)
    shift_rotate_suffix_cpu(ref_k, ref_v, 4, 40, -3, inv_freq)
    shift_rotate_suffix(keys, values, 4, 40, -3, inv_freq)
    assert torch.equal(keys, ref_k)
    assert torch.equal(values, ref_v)


@pytest.mark.parametrize("move", [(3, 36, 5), (9, 42, -4), (10, 17, 20), (79, 80, -79)], ids=str)
def test_copy_suffix_moves_bytes(move: tuple[int, int, int]) -> None:
    start, end, delta = move
    keys, values = random_cache(2, 2, CAPACITY, 64, torch.bfloat16, seed=23)
    new_k, new_v = keys.clone(), values.clone()
    copy_suffix(new_k, new_v, start, end, delta)
    for new, old in ((new_k, keys), (new_v, values)):
        expected = old.clone()
        expected[:, :, start + delta : end + delta] = old[:, :, start:end]
        assert torch.equal(new, expected)


IMPLS: list[ShiftRotate] = [
    shift_rotate_suffix_reference,
    shift_rotate_suffix_cpu,
    shift_rotate_suffix_triton,
]


@pytest.mark.parametrize("fn", IMPLS, ids=lambda fn: fn.__name__)
@pytest.mark.parametrize("move", [(5, 38, 0), (20, 20, 7), (30, 30, -12)], ids=str)
def test_noop_moves_leave_cache_unchanged(fn: ShiftRotate, move: tuple[int, int, int]) -> None:
    keys, values = random_cache(1, 2, 40, 64, torch.bfloat16, seed=29)
    new_k, new_v = keys.clone(), values.clone()
    fn(new_k, new_v, *move, make_inv_freq(64))
    copy_suffix(new_k, new_v, *move)
    assert torch.equal(new_k, keys)
    assert torch.equal(new_v, values)


# --- Validation ---------------------------------------------------------------------------

Args = dict[str, object]


def _base_args() -> Args:
    keys, values = random_cache(2, 2, 40, 64, torch.float16, seed=31)
    return {
        "keys": keys,
        "values": values,
        "start": 4,
        "end": 20,
        "delta": 3,
        "inv_freq": make_inv_freq(64),
        "rotary_dim": None,
    }


def _with(**changes: object) -> Callable[[Args], Args]:
    def apply(args: Args) -> Args:
        return {**args, **changes}

    return apply


def _values_like(make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Args], Args]:
    def apply(args: Args) -> Args:
        return {**args, "values": make(args["values"])}  # type: ignore[arg-type]

    return apply


BAD_ARGS: list[tuple[str, Callable[[Args], Args], str]] = [
    ("keys-3d", lambda a: {**a, "keys": a["keys"][0], "values": a["values"][0]}, "4-D"),
    ("shape-mismatch", _values_like(lambda v: v[:, :1].contiguous()), "shape"),
    (
        "dtype-float64",
        lambda a: {**a, "keys": a["keys"].double(), "values": a["values"].double()},
        "float64",
    ),
    ("dtype-mismatch", _values_like(lambda v: v.to(torch.bfloat16)), "bfloat16"),
    ("values-device", _values_like(lambda v: torch.empty_like(v, device="meta")), "device"),
    ("inv_freq-device", lambda a: {**a, "inv_freq": a["inv_freq"].to("meta")}, "device"),
    ("same-buffer", lambda a: {**a, "values": a["keys"]}, "share memory"),
    ("start-negative", _with(start=-1), "start=-1"),
    ("start-after-end", _with(start=21), "start=21"),
    ("end-past-capacity", _with(end=41), "end=41"),
    ("dest-below-zero", _with(delta=-5), "delta=-5"),
    ("dest-past-capacity", _with(delta=21), "delta=21"),
    ("rotary-odd", _with(rotary_dim=31, inv_freq=make_inv_freq(31)), "rotary_dim=31"),
    ("rotary-too-big", _with(rotary_dim=128, inv_freq=make_inv_freq(128)), "rotary_dim=128"),
    ("rotary-zero", _with(rotary_dim=0), "rotary_dim=0"),
    ("inv_freq-length", _with(rotary_dim=32), r"inv_freq shape \(32,\)"),
]


@pytest.mark.parametrize("fn", IMPLS, ids=lambda fn: fn.__name__)
@pytest.mark.parametrize(("name", "mutate", "match"), BAD_ARGS, ids=[b[0] for b in BAD_ARGS])
def test_bad_arguments_raise_and_change_nothing(
    fn: ShiftRotate, name: str, mutate: Callable[[Args], Args], match: str
) -> None:
    args = mutate(_base_args())
    tensors = {k: v for k, v in args.items() if isinstance(v, torch.Tensor)}
    snapshot = {k: v.clone() for k, v in tensors.items() if v.device.type != "meta"}
    rotary_dim = args.pop("rotary_dim")
    with pytest.raises(ValueError, match=match):
        fn(*args.values(), rotary_dim=rotary_dim)
    for key, before in snapshot.items():
        assert torch.equal(tensors[key], before), f"{name}: {key} changed"


def test_non_integer_positions_raise_type_error() -> None:
    args = _base_args()
    with pytest.raises(TypeError, match="start"):
        shift_rotate_suffix(args["keys"], args["values"], 4.0, 20, 3, args["inv_freq"])
    with pytest.raises(TypeError, match="delta"):
        copy_suffix(args["keys"], args["values"], 4, 20, True)


def test_copy_suffix_validates_range() -> None:
    args = _base_args()
    before = args["keys"].clone()
    with pytest.raises(ValueError, match="delta=21"):
        copy_suffix(args["keys"], args["values"], 4, 20, 21)
    assert torch.equal(args["keys"], before)


def test_import_without_triton_falls_back_to_reference() -> None:
    script = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, kernels\n"
        "assert not kernels.TRITON_AVAILABLE\n"
        "k = torch.randn(1, 1, 8, 4); v = torch.randn(1, 1, 8, 4)\n"
        "kernels.shift_rotate_suffix(k, v, 0, 4, 2, torch.ones(2))\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
