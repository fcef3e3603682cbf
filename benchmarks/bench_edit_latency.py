"""One edit, then one next-token prediction, under `full`, `prefix` and `pie`, side by side.

    python -m benchmarks.bench_edit_latency                  # both models, 512..4k tokens
    python -m benchmarks.bench_edit_latency --quick          # 512 and 1k, default model only

The edit is a one-line insertion near the top of the document, or a one-line deletion near the
top: the case where `prefix` (and llama.cpp's cache reuse) must re-encode almost everything.
Each document is encoded once; every strategy edits its own copy of that cache, so all three
see the same state. Times are medians over --repeats runs; the ratio column is the strategy's
time over `full`'s from the same run. Results go to benchmarks/results/edit_latency.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from benchmarks.machine import machine_record
from cache_engine.kv.editable_cache import EditableCache
from cache_engine.kv.token_edits import TokenEdit
from cache_engine.model.corpus import collect_sources
from cache_engine.model.huge_pages import store_weights_in_huge_pages
from cache_engine.model.loading import load_model

RESULTS = Path(__file__).parent / "results" / "edit_latency.json"

# Qwen2.5-Coder-0.5B's published shape; weights are random, which does not change timings.
QWEN_05B_SHAPE = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
}


def shaped_model(shape: dict) -> torch.nn.Module:
    settings = dict(shape)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Where load_model puts a CPU model's weights.
    store_weights_in_huge_pages(model)
    return model.eval()


def document_ids(tokenizer, vocab_size: int, length: int, seed: int) -> tuple[list[int], list[int]]:
    """(document ids, one line's ids): real code with a tokenizer, random ids without one."""
    if tokenizer is None:
        rng = random.Random(seed)
        return [rng.randrange(vocab_size) for _ in range(length)], [
            rng.randrange(vocab_size) for _ in range(12)
        ]
    _, held_out = collect_sources()
    text = "".join(f.text for f in held_out)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    line = tokenizer("        result = self._compute(value, default=None)\n")["input_ids"]
    return ids[:length], line


def edits_near_top(length: int, line: list[int]) -> dict[str, TokenEdit]:
    at = max(1, length // 20)
    return {
        "insert_line_top": TokenEdit.insert(at, line),
        "delete_line_top": TokenEdit.delete(at, at + len(line)),
    }


def time_edit(base: EditableCache, strategy: str, edit: TokenEdit, repeats: int) -> dict:
    seconds = []
    stats = None
    for _ in range(repeats):
        cache = base.clone(strategy=strategy)
        started = time.perf_counter()
        stats = cache.apply_edits([edit])
        cache.next_token_logits()
        seconds.append(time.perf_counter() - started)
    assert stats is not None
    return {
        "seconds": statistics.median(seconds),
        "tokens_encoded": stats.tokens_encoded,
        "tokens_reused": stats.tokens_reused,
        "tokens_moved": stats.tokens_moved,
    }


def run_model(name: str, model, tokenizer, lengths: list[int], repeats: int) -> list[dict]:
    rows = []
    for length in lengths:
        ids, line = document_ids(tokenizer, model.config.vocab_size, length, seed=length)
        if len(ids) < length:
            print(f"{name}: only {len(ids)} tokens of text, skipping length {length}")
            continue
        base = EditableCache(model, strategy="full", initial_capacity=length + 64)
        started = time.perf_counter()
        base.reset(ids)
        print(f"{name} n={length}: encoded in {time.perf_counter() - started:.2f}s")
        for edit_name, edit in edits_near_top(length, line).items():
            results = {}
            for strategy in ("full", "prefix", "pie"):
                # Full recomputation is the slow baseline: fewer repeats keep the run short.
                n = 1 if strategy != "pie" and length >= 2048 else repeats
                results[strategy] = time_edit(base, strategy, edit, n)
            for strategy, result in results.items():
                rows.append(
                    {
                        "model": name,
                        "tokens": length,
                        "edit": edit_name,
                        "strategy": strategy,
                        **result,
                        "fraction_of_full": result["seconds"] / results["full"]["seconds"],
                    }
                )
        del base
    return rows


def print_table(rows: list[dict]) -> None:
    print("| model | tokens | edit | strategy | ms | re-encoded | reused | of full |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['tokens']} | {r['edit']} | {r['strategy']} | "
            f"{r['seconds'] * 1000:.1f} | {r['tokens_encoded']} | {r['tokens_reused']} | "
            f"{r['fraction_of_full'] * 100:.1f}% |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["default", "qwen2.5-coder-0.5b-shape"])
    parser.add_argument(
        "--shape",
        type=json.loads,
        default=None,
        help="JSON overrides of the 0.5B shape, e.g. '{\"num_hidden_layers\": 12}'",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.lengths, args.models, args.repeats = [512, 1024], ["default"], 2
    rows: list[dict] = []
    shape = {**QWEN_05B_SHAPE, **(args.shape or {})}
    for name in args.models:
        if name == "default":
            loaded = load_model("default")
            rows += run_model(name, loaded.model, loaded.tokenizer, args.lengths, args.repeats)
        else:
            rows += run_model(name, shaped_model(shape), None, args.lengths, args.repeats)
    print_table(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "edit + next-token prediction",
        "machine": machine_record(args.threads),
        "shape": shape,
        "rows": rows,
    }
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
