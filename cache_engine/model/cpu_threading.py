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
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_NAME = "default"
DEFAULT_MODEL_DIR = Path(__file__).parent.parent / "default_model"
# Well past any CPU's last-level cache: weights this large stream from memory on every step.
STREAMED_WEIGHT_BYTES = 256 * 2**20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


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


def choose_openmp_wait_policy(name_or_path: str, device: str) -> str | None:
    """Set OMP_WAIT_POLICY=PASSIVE, and OpenBLAS's OPENBLAS_THREAD_TIMEOUT=4 unless set, for a
    CPU model whose weights stream from memory; a user's own OMP_WAIT_POLICY leaves both alone.
    Returns the OpenMP policy set, or None when none was."""
    if "OMP_WAIT_POLICY" in os.environ or not device.startswith("cpu"):
        return None
    size = weight_bytes_on_disk(name_or_path)
    if size is None or size < STREAMED_WEIGHT_BYTES:
        return None
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    return "PASSIVE"
