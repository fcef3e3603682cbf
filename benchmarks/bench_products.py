"""x·Wᵀ on CPU through torch's MKL, numpy's OpenBLAS and oneDNN, on a decoder layer's matrices.

    python -m benchmarks.bench_products                       # 0.5B shape, 4 layers, 2 threads
    OMP_WAIT_POLICY=PASSIVE OPENBLAS_THREAD_TIMEOUT=4 python -m benchmarks.bench_products

For each row count (1: a decode step; 2-13: a verify pass or an edit; 64-2,048: refreshes and
prefill chunks) it times the seven products of --layers layers of the Qwen2.5-Coder-0.5B shape
(q, k, v, o, gate, up, down; random float32, as loaded), each library in turn, repeated, and
reports the median ms for all of them and the weight bytes read per ms. The libraries are the
ones `LlamaStep` chooses between (`Products` in cache_engine/kv/llama_step.py). Results go to
benchmarks/results/products.json (or --output). Run on a quiet machine (pause training).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.bench_edit_latency import QWEN_05B_SHAPE
from benchmarks.machine import machine_record
from kernels.blas_linear import blas_linear
from kernels.onednn_linear import onednn_linear, onednn_linear_usable

RESULTS = Path(__file__).parent / "results" / "products.json"
ROWS = (1, 2, 4, 13, 64, 512, 2048)


def layer_matrices(layers: int) -> list[torch.Tensor]:
    hidden = QWEN_05B_SHAPE["hidden_size"]
    inner = QWEN_05B_SHAPE["intermediate_size"]
    head_dim = hidden // QWEN_05B_SHAPE["num_attention_heads"]
    kv = QWEN_05B_SHAPE["num_key_value_heads"] * head_dim
    shapes = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden)]
    shapes += [(inner, hidden), (inner, hidden), (hidden, inner)]
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator) for _ in range(layers) for shape in shapes]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    weights = layer_matrices(args.layers)
    weight_bytes = sum(w.nbytes for w in weights)
    libraries: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "mkl (F.linear)": lambda x, w: F.linear(x, w),
        "openblas (numpy)": lambda x, w: blas_linear(x, w, None),
    }
    if onednn_linear_usable():
        libraries["onednn"] = lambda x, w: onednn_linear(x, w, None)
    generator = torch.Generator().manual_seed(1)
    rows_out = []
    with torch.inference_mode():
        for rows in ROWS:
            inputs = {
                n: torch.randn(rows, n, generator=generator) for n in {w.shape[1] for w in weights}
            }
            samples: dict[str, list[float]] = {name: [] for name in libraries}
            for repeat in range(args.repeats + 1):
                order = list(libraries) if repeat % 2 == 0 else list(reversed(libraries))
                for name in order:
                    multiply = libraries[name]
                    started = time.perf_counter()
                    for w in weights:
                        multiply(inputs[w.shape[1]], w)
                    if repeat:  # the first round warms up
                        samples[name].append((time.perf_counter() - started) * 1000)
            ms = {name: statistics.median(values) for name, values in samples.items()}
            rows_out.append(
                {
                    "rows": rows,
                    "ms": ms,
                    "samples_ms": samples,
                    "weight_gb_per_s": {
                        name: weight_bytes / (v / 1000) / 1e9 for name, v in ms.items()
                    },
                }
            )
            print(rows, {name: round(v, 2) for name, v in ms.items()}, flush=True)
    result = {
        "benchmark": "x·Wᵀ over a decoder layer's seven matrices, per library",
        "shape": f"qwen2.5-coder-0.5b, {args.layers} layers, float32 as loaded",
        "weight_bytes": weight_bytes,
        "machine": machine_record(args.threads),
        "repeats": args.repeats,
        "results": rows_out,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
