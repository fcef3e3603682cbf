"""Decode on a GPU: the lean step eagerly, replayed from CUDA graphs, and a plain transformers loop,
against the floor set by reading the weights and the K/V once per token from HBM.

    python -m benchmarks.bench_decode_graph                  # needs CUDA; default model + 0.5B shape
    python -m benchmarks.bench_decode_graph --dtype bfloat16

Each method decodes --new-tokens tokens after the same --context random ids, taking turns within
each repeat; the JSON lists any method whose tokens differ from the plain loop's (in fp32 none
should). The floor is (weight
bytes + K/V bytes read per step) over the device's read bandwidth, measured in the same run by
summing a 1 GiB tensor. Results go to benchmarks/results/decode_graph.json. Not run on this
project's machines (no GPU); `scripts/gpu-check` runs it where there is one.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from benchmarks.bench_decode import plain_decoder
from benchmarks.bench_edit_latency import QWEN_05B_SHAPE, shaped_model
from cache_engine.kv.editable_cache import EditableCache
from cache_engine.kv.llama_step import LlamaStep
from cache_engine.model.loading import load_model

RESULTS = Path(__file__).parent / "results" / "decode_graph.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device_read_bandwidth(device: torch.device, repeats: int = 7) -> float:
    big = torch.ones(256 * 2**20, device=device)  # 1 GiB of fp32
    big.sum()
    torch.cuda.synchronize(device)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        big.sum()
        torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
    return big.nbytes / min(seconds)


def engine_decoder(model, ids: list[int], new_tokens: int, graphs: bool):
    cache = EditableCache(
        model, initial_capacity=len(ids) + new_tokens + 16, forward="lean", cuda_graphs=graphs
    )
    cache.reset(ids)

    def decode() -> list[int]:
        return cache.generate(new_tokens, lambda *_: True)

    return decode


def run_model(name: str, model, args, bandwidth: float) -> dict:
    device = next(model.parameters()).device
    rng = random.Random(0)
    ids = [rng.randrange(model.config.vocab_size) for _ in range(args.context)]
    decoders = {
        "lean": engine_decoder(model, ids, args.new_tokens, graphs=False),
        "lean-graphs": engine_decoder(model, ids, args.new_tokens, graphs=True),
        "plain": plain_decoder(model, ids, args.new_tokens),
    }
    tokens = {method: decode() for method, decode in decoders.items()}  # also the warm-up
    # Recorded, not fatal: a GPU run is scarce, and its timings still say something.
    differing = [m for m, out in tokens.items() if out != tokens["plain"]]
    samples: dict[str, list[float]] = {method: [] for method in decoders}
    for repeat in range(args.repeats):
        order = list(decoders)
        order = order[repeat % len(order) :] + order[: repeat % len(order)]
        for method in order:
            torch.cuda.synchronize(device)
            started = time.perf_counter()
            decoders[method]()
            torch.cuda.synchronize(device)
            samples[method].append((time.perf_counter() - started) * 1000 / (args.new_tokens - 1))
    step = LlamaStep(model)
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_bytes = (
        2
        * config.num_hidden_layers
        * config.num_key_value_heads
        * args.context
        * head_dim
        * next(model.parameters()).element_size()
    )
    floor_ms = 1000 * (step.weight_bytes_per_step() + kv_bytes) / bandwidth
    ms = {method: statistics.median(values) for method, values in samples.items()}
    return {
        "model": name,
        "dtype": str(next(model.parameters()).dtype),
        "weight_bytes_per_step": step.weight_bytes_per_step(),
        "kv_bytes_per_step": kv_bytes,
        "floor_ms": floor_ms,
        "ms_per_token": ms,
        "samples_ms_per_token": samples,
        "over_floor": {method: value / floor_ms for method, value in ms.items()},
        "graphs_over_eager": ms["lean-graphs"] / ms["lean"],
        "methods_decoding_other_tokens_than_plain": differing,
        # The graphed step attends over its whole slab (masked), not only the cached tokens.
        "graph_kv_bytes_per_step": kv_bytes * (args.context + args.new_tokens + 16) // args.context,
        "lean_graphs_over_plain": ms["lean-graphs"] / ms["plain"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["default", "qwen2.5-coder-0.5b-shape"])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_decode_graph needs a CUDA device; this machine has none")
    device = torch.device("cuda")
    dtype = DTYPES[args.dtype]
    bandwidth = device_read_bandwidth(device)
    rows = []
    for name in args.models:
        if name == "qwen2.5-coder-0.5b-shape":
            model = shaped_model(QWEN_05B_SHAPE).to(device=device, dtype=dtype)
        else:
            model = load_model(name, device="cuda", dtype=args.dtype).model
        rows.append(run_model(name, model, args, bandwidth))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "samples_ms_per_token"}))
        del model
        torch.cuda.empty_cache()
    result = {
        "benchmark": "greedy decode ms/token on a GPU: eager lean step, CUDA graphs, plain loop",
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "read_bandwidth_gb_s": bandwidth / 1e9,
        "context": args.context,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
