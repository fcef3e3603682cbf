"""Time the PIE move+rotate (the torch reference, the pass by groups of layers that CPU caches
use, Triton on CUDA) against a plain move of the same bytes.

Cache shaped like Qwen2.5-Coder-0.5B (24 layers, 2 KV heads, head_dim 64, rope theta 1e6).
Each timed call moves a suffix of N tokens by +delta (an insertion) or back by -delta (a
deletion), alternating so the cache layout never drifts out of range.

    python benchmarks/bench_kernels.py [--quick] [--dtype bf16] [--reps 15] [--threads N]

Writes benchmarks/results/kernels.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a plain script from a checkout, the repository root is not on sys.path.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import kernels  # noqa: E402
from benchmarks.machine import machine_record  # noqa: E402

NUM_LAYERS = 24
NUM_KV_HEADS = 2
HEAD_DIM = 64
ROPE_THETA = 1_000_000.0
PREFIX = 64  # tokens before the edit: the suffix starts here
DELTA = 16  # tokens inserted by the simulated edit
SUFFIX_LENGTHS = (512, 1024, 2048, 4096)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

MoveFn = Callable[[torch.Tensor, torch.Tensor, int, int, int], None]


@dataclass
class Row:
    device: str
    impl: str
    suffix_tokens: int
    dtype: str
    median_ms: float
    copy_median_ms: float
    slowdown_vs_copy: float
    suffix_mib: float
    effective_gib_s: float


def inv_freq_for(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return 1.0 / (theta**exponents)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_moves(
    move: MoveFn,
    keys: torch.Tensor,
    values: torch.Tensor,
    suffix: int,
    reps: int,
) -> float:
    """Median milliseconds of one call, alternating +DELTA and -DELTA moves."""
    device = keys.device
    start, end = PREFIX, PREFIX + suffix
    # Warm-up in both directions: the first Triton launch compiles, the first torch call
    # allocates.
    move(keys, values, start, end, DELTA)
    move(keys, values, start + DELTA, end + DELTA, -DELTA)
    synchronize(device)
    samples: list[float] = []
    for rep in range(reps):
        forward = rep % 2 == 0
        s, e, d = (start, end, DELTA) if forward else (start + DELTA, end + DELTA, -DELTA)
        synchronize(device)
        t0 = time.perf_counter()
        move(keys, values, s, e, d)
        synchronize(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    # An odd count leaves the suffix shifted; put it back so later sizes start clean.
    if reps % 2 == 1:
        move(keys, values, start + DELTA, end + DELTA, -DELTA)
    return statistics.median(samples)


def fused_impls(device: torch.device) -> dict[str, Callable[..., None]]:
    impls: dict[str, Callable[..., None]] = {
        "torch": kernels.shift_rotate_suffix_reference,
        "torch-grouped": kernels.shift_rotate_suffix_cpu,
    }
    if device.type == "cuda" and kernels.TRITON_AVAILABLE:
        impls["triton"] = kernels.shift_rotate_suffix_triton
    return impls


def bench_device(device: torch.device, dtype_name: str, reps: int) -> list[Row]:
    dtype = DTYPES[dtype_name]
    capacity = PREFIX + max(SUFFIX_LENGTHS) + DELTA
    shape = (NUM_LAYERS, NUM_KV_HEADS, capacity, HEAD_DIM)
    gen = torch.Generator(device=device).manual_seed(0)
    keys = torch.randn(shape, generator=gen, device=device).to(dtype)
    values = torch.randn(shape, generator=gen, device=device).to(dtype)
    inv_freq = inv_freq_for(HEAD_DIM, ROPE_THETA, device)
    rows: list[Row] = []
    for suffix in SUFFIX_LENGTHS:
        copy_ms = time_moves(kernels.copy_suffix, keys, values, suffix, reps)
        # K and V, each read once and written once.
        suffix_bytes = 2 * NUM_LAYERS * NUM_KV_HEADS * suffix * HEAD_DIM * keys.element_size()
        for name, impl in fused_impls(device).items():

            def fused(k: torch.Tensor, v: torch.Tensor, s: int, e: int, d: int, f=impl) -> None:
                f(k, v, s, e, d, inv_freq)

            fused_ms = time_moves(fused, keys, values, suffix, reps)
            rows.append(
                Row(
                    device=device.type,
                    impl=name,
                    suffix_tokens=suffix,
                    dtype=dtype_name,
                    median_ms=fused_ms,
                    copy_median_ms=copy_ms,
                    slowdown_vs_copy=fused_ms / copy_ms,
                    suffix_mib=suffix_bytes / 2**20,
                    effective_gib_s=2 * suffix_bytes / 2**30 / (fused_ms / 1e3),
                )
            )
            print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: Row) -> str:
    return (
        f"{row.device:>6} {row.impl:>15} {row.dtype:>5} {row.suffix_tokens:>7} "
        f"{row.suffix_mib:>9.2f} {row.median_ms:>10.3f} {row.copy_median_ms:>10.3f} "
        f"{row.slowdown_vs_copy:>8.2f} {row.effective_gib_s:>9.2f}"
    )


HEADER = (
    f"{'device':>6} {'impl':>15} {'dtype':>5} {'tokens':>7} {'K+V MiB':>9} "
    f"{'fused ms':>10} {'copy ms':>10} {'fused/cp':>8} {'GiB/s':>9}"
)


def machine_info(devices: list[torch.device]) -> dict[str, object]:
    info = machine_record(
        torch.get_num_threads(),
        platform=platform.platform(),
        python=platform.python_version(),
        triton=_triton_version(),
        devices=[d.type for d in devices],
    )
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_runtime"] = torch.version.cuda
    return info


def _triton_version() -> str | None:
    if not kernels.TRITON_AVAILABLE:
        return None
    import triton

    return triton.__version__


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of --reps")
    parser.add_argument("--reps", type=int, default=15, help="timed calls per measurement")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "kernels.json"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    reps = 3 if args.quick else args.reps
    if args.threads is not None:
        # On a loaded machine, multi-threaded ops wait on descheduled workers: one thread is
        # often faster and much steadier.
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    print(HEADER)
    rows: list[Row] = []
    for device in devices:
        rows.extend(bench_device(device, args.dtype, reps))
    report = {
        "benchmark": "shift_rotate_suffix vs copy_suffix",
        "machine": machine_info(devices),
        "config": {
            "num_layers": NUM_LAYERS,
            "num_kv_heads": NUM_KV_HEADS,
            "head_dim": HEAD_DIM,
            "rope_theta": ROPE_THETA,
            "prefix_tokens": PREFIX,
            "delta": DELTA,
            "reps": reps,
            "statistic": "median",
            "dtype": args.dtype,
        },
        "results": [asdict(row) for row in rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
