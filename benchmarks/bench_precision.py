"""Lower-precision weights: decode speed from a long cache and agreement with fp32's output.

    python -m benchmarks.bench_precision                      # default model + 0.5B shape, 4 layers
    python -m benchmarks.bench_precision --threads 2 1 --repeats 9
    python -m benchmarks.bench_precision --models default --precisions fp32,int8

Precisions (each a copy of the fp32 model as loaded):
  fp32       the weights as loaded
  fp32-transposed  the same values stored [in, out] (store_weights_transposed; not by default)
  bf16       model.to(bfloat16): weights, activations and the K/V slab in bf16
  int8       int8 weight-only linear layers, lm_head included (cache_engine/model/quantization.py);
             the rest (embedding, norms, activations, K/V) stays fp32
  int8+bf16  int8 linear layers, the rest in bf16
  int8-dynamic  int8 linear layers whose inputs are rounded to int8 too, by blocks of 32 as each
             product starts (quantize_int8_dynamic): the C pass sums int8 products in integers
Speed: the engine's lean step (EditableCache(forward="lean").generate) decodes --new-tokens
tokens after --context random token ids; ms/token is a run's time over its forward passes. The
precisions take turns within each repeat (the first rotating) so load on the machine falls on
all of them; the table shows medians. The weight-read floor is the bytes of weights one step
reads (LlamaStep.weight_bytes_per_step) over this machine's read bandwidth (a sum over a large
tensor, same threads, read once per thread count); `ms/read around` is the median of each run's
step over a read of a buffer of that precision's weight bytes (in huge pages, as the weights
are) just before and after the run. The path that decoded (the compiled C pass, or torch and
why) is in each row's compiled_step_off. `logits err` is the largest difference of the
next-token logits after the prefill from fp32's, over the spread of fp32's. The 0.5B shape
(Qwen2.5-Coder-0.5B, random weights) runs with --qwen-layers layers; its floor for all 24
layers is also given.
Agreement (default model, real code): greedy --agreement-tokens-token continuations of
--prompts held-out places (a line start in the corpus's held-out files, up to --prompt-tokens
tokens of left context) at each precision against fp32's: the share that are identical, and the
share of tokens before the first divergence. Results go to benchmarks/results/precision.json.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.bench_edit_latency import QWEN_05B_SHAPE, shaped_model
from benchmarks.machine import (
    load_average,
    machine_record,
    read_ms,
    streaming_read_bandwidth,
    weight_sized_buffer,
)
from cache_engine.kv.editable_cache import EditableCache
from cache_engine.kv.llama_step import store_weights_transposed
from cache_engine.model.corpus import collect_sources
from cache_engine.model.huge_pages import store_weights_in_huge_pages
from cache_engine.model.loading import load_model
from cache_engine.model.quantization import quantize_int8_dynamic, quantize_int8_weight_only
from kernels.llama_decode_cpu import int8_activation_path

RESULTS = Path(__file__).parent / "results" / "precision.json"
PRECISIONS = ("fp32", "fp32-transposed", "bf16", "int8", "int8+bf16", "int8-dynamic")
DEFAULT_PRECISIONS = ("fp32", "bf16", "int8", "int8+bf16", "int8-dynamic")


def at_precision(model: nn.Module, precision: str) -> nn.Module:
    if precision == "fp32":
        return model
    variant = copy.deepcopy(model)
    if precision == "fp32-transposed":
        store_weights_transposed(variant)
    if precision in ("bf16", "int8+bf16"):
        variant.to(torch.bfloat16)
    if precision in ("int8", "int8+bf16"):
        quantize_int8_weight_only(variant)
    if precision == "int8-dynamic":
        quantize_int8_dynamic(variant)
    store_weights_in_huge_pages(variant)  # as load_model would
    return variant.eval()


def tensor_bytes(module: nn.Module) -> int:
    return sum(t.nbytes for t in itertools.chain(module.parameters(), module.buffers()))


def measure_speed(
    name: str,
    variants: dict[str, nn.Module],
    args: argparse.Namespace,
    bandwidth: float,
    threads: int,
) -> list[dict]:
    vocab = next(iter(variants.values())).config.vocab_size
    ids = [random.Random(0).randrange(vocab) for _ in range(args.context)]
    caches: dict[str, EditableCache] = {}
    prefill_s: dict[str, float] = {}
    next_logits: dict[str, torch.Tensor] = {}
    for precision, model in variants.items():
        cache = EditableCache(
            model, strategy="pie", initial_capacity=len(ids) + args.new_tokens + 16, forward="lean"
        )
        started = time.perf_counter()
        cache.reset(ids)
        prefill_s[precision] = time.perf_counter() - started
        next_logits[precision] = cache.next_token_logits()
        cache.generate(args.new_tokens, lambda *_: True)  # warm-up
        caches[precision] = cache
    load_before = load_average()
    order = list(variants)
    steps = {precision: caches[precision]._lean_step for precision in order}
    # A buffer of each precision's weight bytes, in huge pages where its weights are: read just
    # before and after each run, since this machine's bandwidth moves by a third within minutes.
    sized = {
        precision: weight_sized_buffer(steps[precision].weight_bytes_per_step())
        for precision in order
    }
    samples: dict[str, list[float]] = {precision: [] for precision in order}
    around: dict[str, list[float]] = {precision: [] for precision in order}
    for repeat in range(args.repeats):
        # Rotate who goes first, so a burst of load does not always hit the same precision.
        turn = order[repeat % len(order) :] + order[: repeat % len(order)]
        for precision in turn:
            before = read_ms(sized[precision])
            started = time.perf_counter()
            # generate drops what it decoded, so every run starts from the same cache.
            caches[precision].generate(args.new_tokens, lambda *_: True)
            elapsed = time.perf_counter() - started
            samples[precision].append(elapsed * 1000 / (args.new_tokens - 1))
            around[precision].append((before + read_ms(sized[precision])) / 2)
    load_after = load_average()
    reference = next_logits["fp32"]
    fp32_ms = statistics.median(samples["fp32"])
    rows = []
    for precision, model in variants.items():
        step = steps[precision]
        assert step is not None
        weight_bytes = step.weight_bytes_per_step()
        ms = statistics.median(samples[precision])
        floor_ms = weight_bytes / bandwidth * 1000
        row = {
            "model": name,
            "precision": precision,
            "threads": threads,
            "layers": model.config.num_hidden_layers,
            "model_bytes": tensor_bytes(model),
            "weight_bytes_per_step": weight_bytes,
            "weight_read_floor_ms": floor_ms,
            # None where the compiled C pass decoded; otherwise why torch did.
            "compiled_step_off": step.compiled_step_off,
            "ms_per_token": ms,
            "samples_ms_per_token": samples[precision],
            "over_weight_floor": ms / floor_ms,
            "samples_read_ms_around": around[precision],
            # Each run's step over the reads around it, so a slow minute slows both.
            "over_weight_read_around": statistics.median(
                m / r for m, r in zip(samples[precision], around[precision])
            ),
            "speedup_over_fp32": fp32_ms / ms,
            "prefill_s": prefill_s[precision],
            "logits_error_vs_fp32": float(
                (next_logits[precision] - reference).abs().max() / reference.std()
            ),
            "same_next_token_as_fp32": bool(next_logits[precision].argmax() == reference.argmax()),
            "load_average_before_after": [load_before, load_after],
        }
        full_layers = QWEN_05B_SHAPE["num_hidden_layers"]
        if name != "default" and row["layers"] != full_layers:
            # Every layer reads the same bytes: add the missing ones to the floor.
            layer_bytes = tensor_bytes(model.get_decoder().layers[0])
            full_bytes = weight_bytes + (full_layers - row["layers"]) * layer_bytes
            row["weight_bytes_per_step_24_layers"] = full_bytes
            row["weight_read_floor_ms_24_layers"] = full_bytes / bandwidth * 1000
        rows.append(row)
    return rows


def agreement_prompts(tokenizer, count: int, prompt_tokens: int, seed: int) -> list[list[int]]:
    """Left contexts ending at a non-blank line's start in the corpus's held-out files."""
    _, held_out = collect_sources()
    places = []
    for file_index, source in enumerate(held_out):
        offset = 0
        for line in source.text.splitlines(keepends=True):
            if line.strip() and offset > 200:
                places.append((file_index, offset))
            offset += len(line)
    picks = random.Random(seed).sample(places, min(count, len(places)))
    prompts = []
    for file_index, offset in picks:
        ids = tokenizer(held_out[file_index].text[:offset], add_special_tokens=False)["input_ids"]
        prompts.append(ids[-prompt_tokens:])
    return prompts


def measure_agreement(
    variants: dict[str, nn.Module], prompts: list[list[int]], new_tokens: int
) -> dict[str, dict]:
    continuations: dict[str, list[list[int]]] = {}
    for precision, model in variants.items():
        cache = EditableCache(model, strategy="pie", forward="lean")
        continuations[precision] = []
        for ids in prompts:
            cache.reset(ids)
            continuations[precision].append(cache.generate(new_tokens, lambda *_: True))
    reference = continuations["fp32"]
    result = {}
    for precision, outputs in continuations.items():
        identical = 0
        agreeing = 0
        for theirs, ours in zip(reference, outputs):
            identical += theirs == ours
            agreeing += next(
                (i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), len(theirs)
            )
        result[precision] = {
            "prompts": len(prompts),
            "identical_continuations": identical / len(prompts),
            "tokens_before_first_divergence": agreeing / (len(prompts) * new_tokens),
        }
    return result


def print_tables(rows: list[dict], agreement: dict[str, dict] | None) -> None:
    print(
        "| model | precision | threads | ms/token | vs fp32 | floor ms | ms/floor | weight MB/step "
        "| ms/read around | prefill s | logits err |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['precision']} | {r['threads']} | {r['ms_per_token']:.2f} | "
            f"{r['speedup_over_fp32']:.2f}x | {r['weight_read_floor_ms']:.2f} | "
            f"{r['over_weight_floor']:.2f} | {r['weight_bytes_per_step'] / 1e6:.1f} | "
            f"{r['over_weight_read_around']:.2f} | "
            f"{r['prefill_s']:.2f} | {r['logits_error_vs_fp32']:.4f} |"
        )
    if agreement:
        print("\n| precision | identical continuations | tokens before first divergence |")
        print("|---|---:|---:|")
        for precision, a in agreement.items():
            print(
                f"| {precision} | {a['identical_continuations']:.2f} | "
                f"{a['tokens_before_first_divergence']:.2f} |"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["default", "qwen2.5-coder-0.5b-shape"])
    parser.add_argument(
        "--precisions",
        type=lambda text: text.split(","),
        default=list(DEFAULT_PRECISIONS),
        help=f"comma-separated, fp32 (the reference) first: {','.join(PRECISIONS)}",
    )
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--qwen-layers", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--agreement-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    unknown = [p for p in args.precisions if p not in PRECISIONS]
    if unknown or args.precisions[0] != "fp32":
        parser.error(f"precisions: fp32 first, then any of {', '.join(PRECISIONS)}; got {unknown}")
    rows: list[dict] = []
    agreement = None
    bandwidths = {}
    load_at_start = load_average()
    for name in args.models:
        if name == "default":
            loaded = load_model("default", decode_layout=False)
            model, tokenizer = loaded.model, loaded.tokenizer
        else:
            model = shaped_model({**QWEN_05B_SHAPE, "num_hidden_layers": args.qwen_layers})
            tokenizer = None
        variants = {precision: at_precision(model, precision) for precision in args.precisions}
        for threads in args.threads:
            torch.set_num_threads(threads)
            if threads not in bandwidths:
                bandwidths[threads] = streaming_read_bandwidth(threads)["bytes_per_second"]
                print(f"read bandwidth {bandwidths[threads] / 1e9:.1f} GB/s, {threads} threads")
            rows += measure_speed(name, variants, args, bandwidths[threads], threads)
            print(f"{name}, {threads} threads: done, load average {load_average()}")
        if tokenizer is not None:
            torch.set_num_threads(args.threads[0])
            prompts = agreement_prompts(tokenizer, args.prompts, args.prompt_tokens, args.seed)
            agreement = measure_agreement(variants, prompts, args.agreement_tokens)
        del model, variants
    print_tables(rows, agreement)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "decode ms/token from a long cache and agreement with fp32, by precision",
        "command": " ".join(
            ["python -m benchmarks.bench_precision", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": machine_record(
            args.threads,
            read_bandwidth_gb_s={t: b / 1e9 for t, b in bandwidths.items()},
            load_average_start=load_at_start,
        ),
        "int8_activation_products": int8_activation_path(),
        "context": args.context,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "qwen_layers": args.qwen_layers,
        "rows": rows,
        "agreement_default_model": agreement,
        "agreement_setup": {
            "prompts": args.prompts,
            "prompt_tokens": args.prompt_tokens,
            "continuation_tokens": args.agreement_tokens,
            "seed": args.seed,
        },
    }
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
