"""The machine a benchmark ran on, recorded the same way in every results file.

CPU timings here depend on the processor and its flags (AVX-512, AMX), the threads, how idle
OpenMP and OpenBLAS workers wait (cache_engine/model/cpu_threading.py), the load from other jobs
and the memory bandwidth of the hour. Each benchmark writes `machine_record(...)` under
"machine", with its own measurements added, so two results files can be compared key by key.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cache_engine.model.huge_pages import huge_page_buffer, huge_pages_available

CPU_FLAGS_OF_INTEREST = (
    "avx2",
    "fma",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
UNSET = "unset"


def cpu_description() -> dict[str, Any]:
    """The processor's name, its logical CPUs and which of `CPU_FLAGS_OF_INTEREST` it has."""
    model_name = platform.processor() or platform.machine()
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model_name in ("", platform.machine()):
            model_name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return {
        "model": model_name,
        "logical_cpus": os.cpu_count(),
        "flags": {flag: flag in flags for flag in CPU_FLAGS_OF_INTEREST},
    }


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages: other jobs skew CPU timings by about this."""
    return [round(load, 2) for load in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_record(threads: int | Sequence[int], **measured: Any) -> dict[str, Any]:
    """What every results file says about its machine, written when the results are: `threads`
    is the thread count, or the counts a sweep ran; `measured` adds the benchmark's own facts
    (a bandwidth, the load when it started, a note), and may not replace these."""
    record = {
        "cpu": cpu_description(),
        "threads": threads if isinstance(threads, int) else list(threads),
        "torch": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", UNSET),
        "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT", UNSET),
        "load_average_end": load_average(),
    }
    clashing = sorted(set(record) & set(measured))
    if clashing:
        raise ValueError(f"machine_record sets {', '.join(clashing)} itself")
    return {**record, **measured}


def streaming_read_bandwidth(threads: int, gib: float = 1.0, reads: int = 7) -> dict[str, Any]:
    """Bytes per second of a reduction over a buffer far larger than the caches, with `threads`
    threads (left set): the best of `reads`, after one read that faults the pages in."""
    torch.set_num_threads(threads)
    buffer = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    buffer.sum()
    best = math.inf
    for _ in range(reads):
        started = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - started)
    nbytes = buffer.nbytes
    del buffer
    return {
        "method": f"torch.sum over a {gib:g} GiB float32 tensor, best of {reads}",
        "threads": threads,
        "bytes": nbytes,
        "best_seconds": best,
        "bytes_per_second": nbytes / best,
    }


def weight_sized_buffer(nbytes: int) -> torch.Tensor:
    """A float32 buffer of about `nbytes`, in huge pages where the loaded weights would be, so
    that reading it is the floor a step's weight reads are held to."""
    if huge_pages_available():
        return huge_page_buffer(nbytes // 4 * 4).view(torch.float32).fill_(1.0)
    return torch.ones(nbytes // 4, dtype=torch.float32)


def read_ms(buffer: torch.Tensor) -> float:
    """ms of one read of `buffer` (a sum), best of two."""
    reads = []
    for _ in range(2):
        started = time.perf_counter()
        buffer.sum()
        reads.append((time.perf_counter() - started) * 1000)
    return min(reads)
