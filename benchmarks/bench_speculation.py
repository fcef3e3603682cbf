"""Prompt-lookup speculation against plain greedy decoding, default model, held-out code.

    python -m benchmarks.bench_speculation         # results in benchmarks/results/speculation.json

At line ends in code the model never saw (click, rich, typer, tqdm), the FIM prompt is encoded
once, then `EditableCache.generate` decodes a fixed number of tokens (no stop rules, so all
decode the same amount) plainly, with the shipped drafter (draft length following the
acceptance, up to `--draft-tokens`) and with drafts of a fixed `--draft-tokens` length,
after one untimed run per place, interleaved (each method taking each turn) and repeated. Each
token is chosen as the server chooses it: by the model mixed with the document's n-grams at the
shipped `documentNgramWeight` (`--ngram-weight 0`: the model alone). Checks that all give the
same tokens, and reports the acceptance rate, forward passes and the speed-up of each drafter.
Run on a quiet machine (pause training).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.bench_typing import FILES, source
from benchmarks.machine import machine_record, streaming_read_bandwidth
from cache_engine.completion.engine import CompletionEngine
from cache_engine.completion.settings import CompletionSettings
from cache_engine.completion.speculation import PromptLookup
from cache_engine.model.loading import load_model

RESULTS = Path(__file__).parent / "results" / "speculation.json"


def places(text: str, count: int) -> list[int]:
    """Ends of ordinary code lines in the second half of the file, spread evenly."""
    lines = text.splitlines(keepends=True)
    offsets, position = [], 0
    for index, line in enumerate(lines):
        position += len(line)
        if index > len(lines) // 2 and 20 <= len(line.strip()) <= 70:
            offsets.append(position - 1)
    step = max(1, len(offsets) // count)
    return offsets[::step][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--places-per-file", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--draft-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--ngram-weight", type=float, default=CompletionSettings().document_ngram_weight
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    # This VM's memory switches between a fast and a slow state (reads of 30-40 or 60-67 GB/s),
    # which moves the cost of a verify pass against a step: said before and after.
    bandwidth_before = streaming_read_bandwidth(args.threads)["bytes_per_second"]
    torch.set_num_threads(args.threads)
    loaded = load_model("default")
    settings = CompletionSettings(max_new_tokens=1, document_ngram_weight=args.ngram_weight)
    engine = CompletionEngine(loaded, settings)
    drafters = {
        "adaptive": lambda: PromptLookup(args.draft_tokens),
        "fixed": lambda: PromptLookup(args.draft_tokens, adaptive=False),
    }
    methods = ["plain", *drafters]
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    # Per place, each method's median over the repeats. The speed-up is total time against total
    # time; the median over places of their ratios is beside it, which one slow moment of this VM
    # cannot move.
    place_ms: dict[str, list[float]] = {name: [] for name in methods}
    counts = {name: {"drafted": 0, "accepted": 0, "passes": 0} for name in drafters}
    rows, mismatches, passes_plain = [], 0, 0

    def run(name: str, cache, uri: str) -> tuple[list[int], PromptLookup | None]:
        lookup = drafters[name]() if name in drafters else None
        choose = engine.next_token_chooser(uri)
        tokens = cache.generate(
            args.tokens, lambda token, log_prob: True, draft=lookup, choose=choose
        )
        return tokens, lookup

    for relative in FILES:
        text = source(relative)
        uri = f"file:///bench/{relative}"
        engine.open_document(uri, text, 1, "python")
        for cursor in places(text, args.places_per_file):
            engine.complete(uri, cursor)  # encodes the prompt of this place
            cache = engine.active_region(uri).cache
            # Untimed: the first decode after the encode runs slower whatever comes first (torch's
            # OpenMP workers still spin from the encode), which had counted against plain alone.
            plain, _ = run("plain", cache, uri)
            row: dict = {"file": relative, "cursor": cursor}
            here: dict[str, list[float]] = {name: [] for name in methods}
            for repeat in range(args.repeats):
                # Each method takes each turn in order, so none always follows another.
                shift = repeat % len(methods)
                for name in methods[shift:] + methods[:shift]:
                    started = time.perf_counter()
                    tokens, lookup = run(name, cache, uri)
                    here[name].append(time.perf_counter() - started)
                    mismatches += tokens != plain
                    if lookup is not None and repeat == 0:
                        counts[name]["drafted"] += lookup.drafted
                        counts[name]["accepted"] += lookup.accepted
                        counts[name]["passes"] += len(tokens) - 1 - lookup.accepted
                        row[f"accepted_{name}"] = lookup.accepted
            for name in methods:
                seconds[name].extend(here[name])
                place_ms[name].append(1000 * statistics.median(here[name]))
            passes_plain += len(plain) - 1
            rows.append(row)
        engine.close_document(uri)
        engine.release_closed()
    bandwidth_after = streaming_read_bandwidth(args.threads)["bytes_per_second"]
    result = {
        "model": loaded.name,
        "machine": machine_record(
            args.threads,
            read_bandwidth_gb_s_before=bandwidth_before / 1e9,
            read_bandwidth_gb_s_after=bandwidth_after / 1e9,
        ),
        "threads": args.threads,
        "places": len(rows),
        "tokens_per_place": args.tokens,
        "draft_tokens": args.draft_tokens,
        "document_ngram_weight": args.ngram_weight,
        "repeats": args.repeats,
        "outputs_differing_from_greedy": mismatches,
        "plain": {
            "forward_passes": passes_plain,
            "ms_per_place_p50": 1000 * statistics.median(seconds["plain"]),
        },
        **{
            name: {
                "drafter": (
                    f"draft length from 2, +2 after a draft kept whole, -1 after a rejection, "
                    f"at most {args.draft_tokens} (shipped)"
                    if name == "adaptive"
                    else f"always {args.draft_tokens} tokens"
                ),
                "drafted_tokens": counts[name]["drafted"],
                "accepted_tokens": counts[name]["accepted"],
                "acceptance_rate": (
                    counts[name]["accepted"] / counts[name]["drafted"]
                    if counts[name]["drafted"]
                    else None
                ),
                "forward_passes": counts[name]["passes"],
                "ms_per_place_p50": 1000 * statistics.median(seconds[name]),
                "speed_up": sum(seconds["plain"]) / sum(seconds[name]),
                "speed_up_median_over_places": statistics.median(
                    plain_ms / ms for plain_ms, ms in zip(place_ms["plain"], place_ms[name])
                ),
            }
            for name in drafters
        },
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
