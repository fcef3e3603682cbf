"""How torch's OpenMP workers wait, chosen for the model before torch loads.

libgomp's workers spin between parallel regions by default. That suits a small model whose
weights sit in the CPU's caches (the default model: spinning decodes 1.2x and prefills 1.25x
faster than sleeping, `benchmarks/results/decode*.json`). A model whose weights stream from
memory decodes through numpy's BLAS (kernels/blas_linear.py), and its threads need the cores the
spinning workers hold: there the workers must sleep (`OMP_WAIT_POLICY=PASSIVE`; the 0.5B shape
decodes 2x faster). libgomp reads the policy once, when torch loads, so the server decides from
the weights' size on disk before anything imports torch. This module imports no torch.

The same holds the other way round: OpenBLAS's own workers spin for 2^28 cycles (a tenth of a
second) after each product, holding a core that the next torch operation or oneDNN product
needs. With both pools sharing two cores, the server makes them sleep after 2^4 cycles
(`OPENBLAS_THREAD_TIMEOUT=4`, OpenBLAS's minimum; read when numpy loads it): on the 0.5B shape
(6 layers, 2 threads) a 2-token pass ran in 28 ms against 40, a 512-token one in 377 against
425-548, and decoding was unchanged (51 ms per token at 256 tokens either way).

A model that stays in cache keeps the spinning, but shorter. Its one-token steps and small
passes run in the compiled C pass on a thread pool of its own, so after a torch pass (an encode,
a refresh of stale tokens) libgomp's workers, spinning for their default 300,000 rounds, held
the core the C pass's helper needed: the next decode steps stalled for a scheduler tick at a
time. With `GOMP_SPINCOUNT=10000` the workers still spin across the short gaps inside a torch
pass and sleep soon after it: on the default model, keystroke to ghost text after a far edit
(an encode, a refresh, 24 tokens) went from 54-57 to 44-45 ms p50 in alternating runs, a fresh
document's first completion stayed at 128-135 ms, and 1,000 or 100,000 rounds were slower than
10,000 (`/tmp` probes through CompletionEngine, not kept).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_NAME = "default"
DEFAULT_MODEL_DIR = Path(__file__).parent.parent / "default_model"
# Well past any CPU's last-level cache: weights this large stream from memory on every step.
STREAMED_WEIGHT_BYTES = 256 * 2**20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
# Rounds libgomp's workers spin before sleeping, for a model in cache (module doc).
CACHED_MODEL_SPIN_COUNT = "10000"


def weight_bytes_on_disk(name_or_path: str) -> int | None:
    """Bytes of the weight files of a local model folder (or the default model); None when
    `name_or_path` is not a local folder."""
    folder = DEFAULT_MODEL_DIR if name_or_path == DEFAULT_MODEL_NAME else Path(name_or_path)
    folder = folder.expanduser()
    try:
        if not folder.is_dir():
            return None
        return sum(f.stat().st_size for f in folder.iterdir() if f.name.endswith(WEIGHT_SUFFIXES))
    except OSError:
        return None  # unreadable: loading will say what is wrong


def choose_openmp_wait_policy(name_or_path: str, device: str) -> dict[str, str]:
    """Set, before torch loads, how its OpenMP workers wait for the CPU model at `name_or_path`:
    `OMP_WAIT_POLICY=PASSIVE` and OpenBLAS's `OPENBLAS_THREAD_TIMEOUT=4` (unless set) when its
    weights stream from memory, `GOMP_SPINCOUNT=10000` (unless set) when they do not. A user's
    own OMP_WAIT_POLICY leaves all alone, and so does a model that is not a local folder.
    Returns the variables set."""
    if "OMP_WAIT_POLICY" in os.environ or not device.startswith("cpu"):
        return {}
    size = weight_bytes_on_disk(name_or_path)
    if size is None:
        return {}
    if size < STREAMED_WEIGHT_BYTES:
        chosen = {"GOMP_SPINCOUNT": CACHED_MODEL_SPIN_COUNT}
    else:
        chosen = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
    chosen = {name: value for name, value in chosen.items() if name not in os.environ}
    os.environ.update(chosen)
    return chosen
