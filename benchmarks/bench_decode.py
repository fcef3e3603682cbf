"""Greedy decoding speed from a long cache: the engine's lean step, its transformers forward, and a
plain transformers greedy loop, against the floor set by reading the weights once per token.

    python -m benchmarks.bench_decode                        # default model + 0.5B shape, 4 layers
    python -m benchmarks.bench_decode --qwen-layers 24       # the whole 0.5B shape (2 GB fp32)
    python -m benchmarks.bench_decode --models default --repeats 9

Each method decodes --new-tokens tokens after the same --context random token ids:
  lean    EditableCache(forward="lean").generate as shipped: each one-token step is the compiled
          C step (kernels/llama_decode_cpu.py) where it can be built
  lean-torch  the same with the torch step of llama_step.py (compiled_step=False), its products
          through numpy's BLAS where it uses it (kernels/blas_linear.py)
  lean-mkl  the torch step with torch's own products (MKL; blas_products=False)
  hf      EditableCache(forward="hf").generate: the transformers forward through SlabCache
  plain   model(input_ids=[[token]], cache=DynamicCache) in a loop, argmax, nothing else
ms/token is a run's time over its forward passes (the first token comes from the prefill's
logits). Each model is measured with its weights as loaded, then again after
`store_weights_transposed` (the same values, stored [in, out], which one-token products
stream). The methods take turns within each repeat, so load on the machine falls on all of
them; the tables show medians. The weight-read floor is the bytes of weights one step reads
over the read bandwidth of this machine: a sum over a tensor of those bytes (in huge pages, as
the weights are), same threads, best of two right before and two right after each method's run
(the bandwidth here moves by a third within minutes, sometimes by half within a repeat). The
ratio to it is the median over repeats of each run's step over the reads around it; the floor
from one read at the start is kept as `..._at_start`. A 0.5B run with fewer
layers is also scaled to the full 24 layers by weight bytes, which assumes a bandwidth-bound step.
Results go to benchmarks/results/decode.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import DynamicCache, PreTrainedModel

from benchmarks.bench_edit_latency import QWEN_05B_SHAPE, shaped_model
from benchmarks.machine import (
    machine_record,
    read_ms,
    streaming_read_bandwidth,
    weight_sized_buffer,
)
from cache_engine.kv.editable_cache import EditableCache
from cache_engine.kv.llama_step import LlamaStep, store_weights_transposed
from cache_engine.model.huge_pages import store_weights_in_huge_pages
from cache_engine.model.loading import load_model

RESULTS = Path(__file__).parent / "results" / "decode.json"
METHODS = ("lean", "lean-torch", "lean-mkl", "hf", "plain")


def engine_decoder(
    model: PreTrainedModel,
    ids: list[int],
    new_tokens: int,
    forward: str,
    blas_products: bool | None = None,
    compiled_step: bool | None = None,
):
    cache = EditableCache(
        model,
        strategy="pie",
        initial_capacity=len(ids) + new_tokens + 16,
        forward=forward,
        blas_products=blas_products,
        compiled_step=compiled_step,
    )
    cache.reset(ids)

    def decode() -> list[int]:
        # generate drops what it decoded, so every run starts from the same cache.
        return cache.generate(new_tokens, lambda *_: True)

    return decode


def plain_decoder(model: PreTrainedModel, ids: list[int], new_tokens: int):
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        prefill = model(input_ids=torch.tensor([ids], device=device), cache=cache, use_cache=True)
    first = int(prefill.logits[0, -1].argmax())

    @torch.inference_mode()
    def decode() -> list[int]:
        cache.crop(len(ids) - cache.get_seq_length())  # drop the last run's tokens
        tokens = [first]
        while len(tokens) < new_tokens:
            step = model(
                input_ids=torch.tensor([[tokens[-1]]], device=device), cache=cache, use_cache=True
            ).logits
            tokens.append(int(step[0, -1].argmax()))
        return tokens

    return decode


def measure(
    decoders: dict[str, Callable[[], list[int]]],
    repeats: int,
    forwards: int,
    weights_sized: torch.Tensor,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """ms per forward pass of each method in each repeat, with "read" the ms of one read of
    `weights_sized` (a buffer of the step's weight bytes) in that repeat; and, for each method,
    the read right around its run (best of two just before and two just after, averaged): this
    machine's bandwidth moves by a third within minutes, so the floor is measured beside the
    steps it bounds."""
    samples: dict[str, list[float]] = {method: [] for method in (*METHODS, "read")}
    around: dict[str, list[float]] = {method: [] for method in METHODS}

    for repeat in range(repeats):
        # Rotate who goes first, so a burst of load does not always hit the same method.
        order = METHODS[repeat % len(METHODS) :] + METHODS[: repeat % len(METHODS)]
        reads = []
        for method in order:
            before = read_ms(weights_sized)
            started = time.perf_counter()
            decoders[method]()
            samples[method].append((time.perf_counter() - started) * 1000 / forwards)
            after = read_ms(weights_sized)
            around[method].append((before + after) / 2)
            reads += [before, after]
        samples["read"].append(statistics.median(reads))
    return samples, around


def run_model(
    name: str, model: PreTrainedModel, args: argparse.Namespace, bandwidth: float
) -> list[dict]:
    """One row per weight layout: as loaded, then stored transposed (store_weights_transposed)."""
    config = model.config
    ids = [random.Random(0).randrange(config.vocab_size) for _ in range(args.context)]
    started = time.perf_counter()
    decoders: dict[str, Callable[[], list[int]]] = {
        "lean": engine_decoder(model, ids, args.new_tokens, "lean"),
        "lean-torch": engine_decoder(model, ids, args.new_tokens, "lean", compiled_step=False),
        "lean-mkl": engine_decoder(
            model, ids, args.new_tokens, "lean", blas_products=False, compiled_step=False
        ),
        "hf": engine_decoder(model, ids, args.new_tokens, "hf"),
        "plain": plain_decoder(model, ids, args.new_tokens),
    }
    print(
        f"{name}: {len(decoders)} {args.context}-token prefills in {time.perf_counter() - started:.1f}s"
    )
    step = LlamaStep(model)
    decoders_blas = step.blas_products
    compiled_off = step.compiled_step_off
    weight_bytes = step.weight_bytes_per_step()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_bytes = (
        2 * config.num_hidden_layers * config.num_key_value_heads * args.context * head_dim
    ) * next(model.parameters()).element_size()
    start_floor_ms = weight_bytes / bandwidth * 1000
    weights_sized = weight_sized_buffer(weight_bytes)
    rows = []
    for layout in args.layouts:
        if layout == "transposed":
            # Same values, so the prefilled caches stay valid.
            store_weights_transposed(model)
            store_weights_in_huge_pages(model)  # as load_model would
        tokens = {method: decode() for method, decode in decoders.items()}  # also the warm-up
        samples, around = measure(decoders, args.repeats, args.new_tokens - 1, weights_sized)
        ms = {method: statistics.median(values) for method, values in samples.items()}
        floor_ms = ms.pop("read")

        # Each run's step over the reads around it, so a slow minute slows both.
        over_floor = {
            method: statistics.median(m / r for m, r in zip(samples[method], around[method]))
            for method in ("lean", "lean-torch")
        }
        rows.append(
            {
                "model": name,
                "weights": layout,
                "layers": config.num_hidden_layers,
                "parameters": sum(p.numel() for p in model.parameters()),
                "weight_bytes_per_step": weight_bytes,
                "kv_bytes_per_step": kv_bytes,
                "weight_read_floor_ms": floor_ms,
                "weight_read_floor_ms_at_start": start_floor_ms,
                "ms_per_token": ms,
                "samples_ms_per_token": samples,
                "samples_read_ms_around": around,
                "lean_over_plain": ms["lean"] / ms["plain"],
                "hf_over_plain": ms["hf"] / ms["plain"],
                "lean_over_weight_floor": over_floor["lean"],
                "lean_over_weight_floor_at_start": ms["lean"] / start_floor_ms,
                "lean_torch_over_plain": ms["lean-torch"] / ms["plain"],
                "lean_torch_over_weight_floor": over_floor["lean-torch"],
                "lean_uses_compiled_step": compiled_off is None,
                "compiled_step_off": compiled_off,
                "lean_torch_uses_blas_products": decoders_blas,
                "same_tokens": len({tuple(t) for t in tokens.values()}) == 1,
            }
        )
    return rows


def scaled_qwen_row(row: dict, full_weight_bytes: int) -> dict:
    scale = full_weight_bytes / row["weight_bytes_per_step"]
    layers = QWEN_05B_SHAPE["num_hidden_layers"]
    return {
        "model": f"{row['model']} scaled to {layers} layers (estimate)",
        "weights": row["weights"],
        "layers": layers,
        "weight_bytes_per_step": full_weight_bytes,
        "weight_read_floor_ms": row["weight_read_floor_ms"] * scale,
        "ms_per_token": {method: ms * scale for method, ms in row["ms_per_token"].items()},
        "lean_over_plain": row["lean_over_plain"],
        "hf_over_plain": row["hf_over_plain"],
        "lean_over_weight_floor": row["lean_over_weight_floor"],
    }


def qwen_weight_bytes(layers: int) -> int:
    """Weight bytes of one step of the 0.5B shape with `layers` layers, fp32, without building it."""
    hidden, inter = QWEN_05B_SHAPE["hidden_size"], QWEN_05B_SHAPE["intermediate_size"]
    heads, kv_heads = QWEN_05B_SHAPE["num_attention_heads"], QWEN_05B_SHAPE["num_key_value_heads"]
    head_dim = hidden // heads
    qkv_rows = (heads + 2 * kv_heads) * head_dim
    attention = hidden * qkv_rows + qkv_rows + heads * head_dim * hidden  # q/k/v have biases
    per_layer = attention + 3 * hidden * inter + 2 * hidden
    # Tied embeddings: lm_head reads the whole matrix, the lookup one row; and the final norm.
    return 4 * (layers * per_layer + QWEN_05B_SHAPE["vocab_size"] * hidden + 2 * hidden)


def print_table(rows: list[dict]) -> None:
    print(
        "| model | weights | layers | lean ms | lean-torch ms | lean-mkl ms | hf ms | plain ms "
        "| floor ms | lean/plain | lean/floor |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ms = r["ms_per_token"]
        print(
            f"| {r['model']} | {r['weights']} | {r['layers']} | {ms['lean']:.2f} | "
            f"{ms['lean-torch']:.2f} | {ms['lean-mkl']:.2f} | {ms['hf']:.2f} | {ms['plain']:.2f} | "
            f"{r['weight_read_floor_ms']:.2f} | {r['lean_over_plain']:.2f} | "
            f"{r['lean_over_weight_floor']:.2f} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["default", "qwen2.5-coder-0.5b-shape"])
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--qwen-layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--layouts",
        nargs="+",
        choices=["as-loaded", "transposed"],
        default=["as-loaded", "transposed"],
        help="weight layouts to measure, in order (transposed: store_weights_transposed)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bandwidth = streaming_read_bandwidth(args.threads)["bytes_per_second"]
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s with {args.threads} threads")
    rows = []
    for name in args.models:
        if name == "default":
            model = load_model("default", decode_layout=False).model
        else:
            model = shaped_model({**QWEN_05B_SHAPE, "num_hidden_layers": args.qwen_layers})
        measured = run_model(name, model, args, bandwidth)
        rows += measured
        if name != "default" and args.qwen_layers != QWEN_05B_SHAPE["num_hidden_layers"]:
            full = qwen_weight_bytes(QWEN_05B_SHAPE["num_hidden_layers"])
            rows += [scaled_qwen_row(row, full) for row in measured]
        del model
    print_table(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "greedy decode ms/token from a long cache",
        "machine": machine_record(args.threads, read_bandwidth_gb_s=bandwidth / 1e9),
        "context": args.context,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "rows": rows,
    }
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
