"""Decode ms/token of pie-lsp and llama.cpp, each under both OpenMP wait policies.

    python -m benchmarks.bench_decode_peer            # needs the `peer` extra, like bench_llamacpp

libgomp reads OMP_WAIT_POLICY once per process and both engines use it, so bench_llamacpp runs
both under one policy. Sleeping workers (PASSIVE) are what pie-lsp's BLAS decode needs
(kernels/blas_linear.py), while llama.cpp's hundreds of barriers per step want spinning ones on a
quiet machine. Here each policy gets its own process (this script re-runs itself), and in each
the two engines decode 24 tokens from the same 2,048-token cache of the Qwen2.5-Coder-0.5B shape
(random f32 weights, GGUF f32 for llama.cpp), taking turns. pie-lsp runs as the server would
under that policy: its compiled one-token step (kernels/llama_decode_cpu.py) where it can be
built, else the torch step with BLAS products when PASSIVE or MKL over transposed weights. Results go to
benchmarks/results/decode_peer.json. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "decode_peer.json"
POLICIES = ("spin (unset)", "PASSIVE")


def measure(repeats: int, threads: int) -> dict:
    import torch

    from benchmarks.bench_edit_latency import QWEN_05B_SHAPE, shaped_model
    from benchmarks.bench_llamacpp import LlamaCppContext, LlamaCppModel, write_gguf
    from cache_engine.kv.editable_cache import EditableCache
    from cache_engine.kv.llama_step import store_weights_transposed
    from cache_engine.model.huge_pages import store_weights_in_huge_pages
    from cache_engine.model.loading import default_decode_layout
    from kernels.blas_linear import blas_products_usable

    torch.set_num_threads(threads)
    model = shaped_model(QWEN_05B_SHAPE)
    path = Path(tempfile.mkdtemp(prefix="pie-lsp-gguf-")) / "model.f32.gguf"
    write_gguf(model, path)
    ids = [random.Random(0).randrange(QWEN_05B_SHAPE["vocab_size"]) for _ in range(2048)]
    llama = LlamaCppContext(
        LlamaCppModel(path),
        n_ctx=2304,
        threads=threads,
        flash_attn="off",
        n_batch=2048,
        n_ubatch=512,
    )
    first_logits = llama.decode(ids, 0)
    if default_decode_layout(model.config.model_type, torch.device("cpu"), torch.float32):
        store_weights_transposed(model)  # as load_model would
    store_weights_in_huge_pages(model)  # as load_model would
    cache = EditableCache(model, strategy="pie", initial_capacity=len(ids) + 48, forward="lean")
    cache.reset(ids)

    def llama_cpp() -> None:
        llama.seq_rm(0, len(ids), -1)
        llama.generate(first_logits, len(ids), 25)

    def pie_lsp() -> None:
        cache.generate(25, lambda *_: True)

    samples: dict[str, list[float]] = {"llama.cpp": [], "pie-lsp": []}
    engines = [("llama.cpp", llama_cpp), ("pie-lsp", pie_lsp)]
    for repeat in range(repeats):
        for name, run in engines if repeat % 2 == 0 else engines[::-1]:
            started = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - started) * 1000 / 24)
    path.unlink()
    return {
        "pie_lsp_step": (
            "compiled C step (kernels/llama_decode_cpu.py)"
            if cache._lean_step.compiled_step_off is None
            else "torch step, " + ("numpy BLAS" if blas_products_usable() else "MKL, transposed")
        ),
        "ms_per_token": {name: statistics.median(values) for name, values in samples.items()},
        "samples_ms_per_token": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.repeats, args.threads)))
        return
    runs = {}
    for policy in POLICIES:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")
        }
        if policy == "PASSIVE":
            # What the server sets for a model this size (cache_engine/model/cpu_threading.py).
            env["OMP_WAIT_POLICY"] = "PASSIVE"
            env["OPENBLAS_THREAD_TIMEOUT"] = "4"
        command = [sys.executable, "-m", "benchmarks.bench_decode_peer", "--child"]
        command += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
        child = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        runs[policy] = json.loads(child.stdout.strip().splitlines()[-1])
        print(policy, {k: round(v, 1) for k, v in runs[policy]["ms_per_token"].items()})
    best = {
        engine: min((run["ms_per_token"][engine], policy) for policy, run in runs.items())
        for engine in ("llama.cpp", "pie-lsp")
    }
    report = {
        "benchmark": "decode ms/token from a 2,048-token cache, each engine under both policies",
        "model": "qwen2.5-coder-0.5b-shape, random f32 weights",
        "threads": args.threads,
        "repeats": args.repeats,
        "load_average": os.getloadavg(),
        "runs": runs,
        "best": {engine: {"ms_per_token": ms, "policy": p} for engine, (ms, p) in best.items()},
        "pie_over_llama_cpp_best_of_each": best["pie-lsp"][0] / best["llama.cpp"][0],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["best"]), f"wrote {args.output}")


if __name__ == "__main__":
    main()
