"""Decode ms/token of pie-lsp and llama.cpp, each in its own process, under both OpenMP policies.

    python -m benchmarks.bench_decode_peer            # needs the `peer` extra, like bench_llamacpp

libgomp reads OMP_WAIT_POLICY once per process and both engines use it, so bench_llamacpp runs
both under one policy. Sleeping workers (PASSIVE) are what pie-lsp's server sets for a model this
size (cache_engine/model/cpu_threading.py), while llama.cpp's hundreds of barriers per step want
spinning ones on a quiet machine. Here every engine and policy gets a process of its own, as a
server would: four children, alive together, each holding the Qwen2.5-Coder-0.5B shape (random
f32 weights, seeded alike; GGUF f32 for llama.cpp) and a 2,048-token cache. The parent asks them
in turns, round after round, each time in a new order, to decode 24 tokens, so a change of the
machine's memory speed between minutes falls on all four alike. Between turns it waits
`--settle-ms` for the last child's spinning workers to go to sleep, so no turn shares the cores
with another process's threads.

pie-lsp runs as the server would: its compiled one-token step (kernels/llama_decode_cpu.py)
where it can be built, else the torch step with BLAS products when PASSIVE or MKL over
transposed weights. Results go to benchmarks/results/decode_peer.json. Run on a quiet machine.
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
ENGINES = ("llama.cpp", "pie-lsp")
DOCUMENT_TOKENS = 2048
DECODED = 24


def document_ids(vocab_size: int) -> list[int]:
    rng = random.Random(0)
    return [rng.randrange(vocab_size) for _ in range(DOCUMENT_TOKENS)]


def serve(engine: str, gguf: Path, threads: int) -> None:
    """A child: set up one engine, answer "ready", then time one 24-token decode per "run"."""
    import torch

    from benchmarks.bench_edit_latency import QWEN_05B_SHAPE, shaped_model

    torch.set_num_threads(threads)
    ids = document_ids(QWEN_05B_SHAPE["vocab_size"])
    if engine == "llama.cpp":
        from benchmarks.bench_llamacpp import LlamaCppContext, LlamaCppModel

        llama = LlamaCppContext(
            LlamaCppModel(gguf),
            n_ctx=2304,
            threads=threads,
            flash_attn="off",
            n_batch=2048,
            n_ubatch=512,
        )
        first_logits = llama.decode(ids, 0)

        def decode() -> None:
            llama.seq_rm(0, len(ids), -1)
            llama.generate(first_logits, len(ids), DECODED + 1)

        step = "llama.cpp"
    else:
        from cache_engine.kv.editable_cache import EditableCache
        from cache_engine.kv.llama_step import store_weights_transposed
        from cache_engine.model.huge_pages import store_weights_in_huge_pages
        from cache_engine.model.loading import default_decode_layout
        from kernels.blas_linear import blas_products_usable

        model = shaped_model(QWEN_05B_SHAPE)
        if default_decode_layout(model.config.model_type, torch.device("cpu"), torch.float32):
            store_weights_transposed(model)  # as load_model would
        store_weights_in_huge_pages(model)  # as load_model would
        cache = EditableCache(model, strategy="pie", initial_capacity=len(ids) + 48, forward="lean")
        cache.reset(ids)

        def decode() -> None:
            cache.generate(DECODED + 1, lambda *_: True)

        assert cache._lean_step is not None
        step = (
            "compiled C step (kernels/llama_decode_cpu.py)"
            if cache._lean_step.compiled_step_off is None
            else "torch step, " + ("numpy BLAS" if blas_products_usable() else "MKL, transposed")
        )
    decode()  # untimed: first-touch of buffers, helper threads started
    print(json.dumps({"ready": step}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        started = time.perf_counter()
        decode()
        # DECODED + 1 steps from the cached logits: the first token is free, the rest are steps.
        ms = (time.perf_counter() - started) * 1000 / DECODED
        print(json.dumps({"ms_per_token": ms}), flush=True)


def read_reply(child: subprocess.Popen, policy: str, engine: str) -> dict:
    """The child's next JSON line; raises naming the child if it died or said something else."""
    assert child.stdout is not None
    line = child.stdout.readline()
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        child.poll()
        raise RuntimeError(
            f"the {engine} child under {policy} answered {line!r} (exit status {child.returncode})"
        ) from None


def child_environment(policy: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")
    }
    if policy == "PASSIVE":
        # What the server sets for a model this size (cache_engine/model/cpu_threading.py).
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        env["OPENBLAS_THREAD_TIMEOUT"] = "4"
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settle-ms", type=float, default=300.0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--serve", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--gguf", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.gguf, args.threads)
        return

    import torch

    from benchmarks.bench_edit_latency import QWEN_05B_SHAPE, shaped_model
    from benchmarks.bench_llamacpp import weight_bytes_per_decode_step, write_gguf
    from benchmarks.machine import load_average, machine_record, read_ms, weight_sized_buffer

    torch.set_num_threads(args.threads)
    model = shaped_model(QWEN_05B_SHAPE)
    weight_bytes = weight_bytes_per_decode_step(model)
    scratch = tempfile.TemporaryDirectory(prefix="pie-lsp-gguf-")
    gguf = Path(scratch.name) / "model.f32.gguf"
    # The floor: the same bytes read once, in the parent, before each round.
    weights_read = weight_sized_buffer(weight_bytes)
    children: dict[tuple[str, str], subprocess.Popen] = {}
    steps: dict[str, str] = {}
    samples: dict[str, dict[str, list[float]]] = {p: {e: [] for e in ENGINES} for p in POLICIES}
    floors_ms: list[float] = []
    try:
        write_gguf(model, gguf)
        del model
        for policy in POLICIES:
            for engine in ENGINES:
                command = [sys.executable, "-m", "benchmarks.bench_decode_peer"]
                command += ["--serve", engine, "--gguf", str(gguf), "--threads", str(args.threads)]
                child = subprocess.Popen(
                    command,
                    env=child_environment(policy),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                children[(policy, engine)] = child
                # One at a time: four 0.5B models loading at once would only slow each other.
                steps[f"{engine}, {policy}"] = read_reply(child, policy, engine)["ready"]
        order = list(children)
        rng = random.Random(1)
        for round_ in range(args.rounds):
            rng.shuffle(order)
            time.sleep(args.settle_ms / 1000)
            floors_ms.append(read_ms(weights_read))
            for policy, engine in order:
                time.sleep(args.settle_ms / 1000)
                child = children[(policy, engine)]
                assert child.stdin is not None
                child.stdin.write("run\n")
                child.stdin.flush()
                samples[policy][engine].append(read_reply(child, policy, engine)["ms_per_token"])
            print(
                f"round {round_ + 1}: floor {floors_ms[-1]:.1f} ms, "
                + ", ".join(f"{e} {p} {samples[p][e][-1]:.1f}" for p, e in order),
                flush=True,
            )
    finally:
        for child in children.values():
            if child.stdin is not None:
                child.stdin.close()
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        scratch.cleanup()

    median = {p: {e: statistics.median(samples[p][e]) for e in ENGINES} for p in POLICIES}
    best = {e: min((median[p][e], p) for p in POLICIES) for e in ENGINES}
    floor = statistics.median(floors_ms)
    # Round by round, both engines at their best policy, so each ratio shares its minutes.
    per_round = [
        samples[best["pie-lsp"][1]]["pie-lsp"][r] / samples[best["llama.cpp"][1]]["llama.cpp"][r]
        for r in range(args.rounds)
    ]
    report = {
        "benchmark": (
            f"decode ms/token from a {DOCUMENT_TOKENS}-token cache ({DECODED} steps), each engine "
            "and OpenMP policy in its own long-lived process, taking turns"
        ),
        "model": "qwen2.5-coder-0.5b-shape, random f32 weights",
        "machine": machine_record(args.threads),
        "threads": args.threads,
        "rounds": args.rounds,
        "settle_ms": args.settle_ms,
        "load_average": load_average(),
        "steps": steps,
        "weight_bytes_per_step": weight_bytes,
        "floor_method": "one sum over a float32 buffer of the weight bytes (huge pages where the "
        "weights are), best of two, before each round",
        "floor_ms_per_round": floors_ms,
        "floor_ms": floor,
        "ms_per_token": median,
        "times_floor": {p: {e: median[p][e] / floor for e in ENGINES} for p in POLICIES},
        "samples_ms_per_token": samples,
        "best": {e: {"ms_per_token": ms, "policy": p} for e, (ms, p) in best.items()},
        "pie_over_llama_cpp_best_of_each": best["pie-lsp"][0] / best["llama.cpp"][0],
        "pie_over_llama_cpp_best_of_each_per_round": per_round,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["best"]), f"floor {floor:.1f} ms", f"wrote {args.output}")


if __name__ == "__main__":
    main()
