"""Prompt-lookup speculation against plain greedy decoding, default model, held-out code.

    python -m benchmarks.bench_speculation         # results in benchmarks/results/speculation.json

At line ends in code the model never saw (click, rich, typer, tqdm), the FIM prompt is encoded
once, then `EditableCache.generate` decodes a fixed number of tokens (no stop rules, so all
decode the same amount) plainly, with the shipped drafter (draft length following the
acceptance, up to `--draft-tokens`) and with drafts of a fixed `--draft-tokens` length,
interleaved and repeated. Checks that all give the same tokens, and reports the acceptance rate,
forward passes and the speed-up of each drafter. Run on a quiet machine (pause training).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.bench_typing import FILES, source
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
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model("default")
    engine = CompletionEngine(loaded, CompletionSettings(max_new_tokens=1))
    drafters = {
        "adaptive": lambda: PromptLookup(args.draft_tokens),
        "fixed": lambda: PromptLookup(args.draft_tokens, adaptive=False),
    }
    seconds: dict[str, list[float]] = {"plain": [], **{name: [] for name in drafters}}
    counts = {name: {"drafted": 0, "accepted": 0, "passes": 0} for name in drafters}
    rows, mismatches, passes_plain = [], 0, 0
    for relative in FILES:
        text = source(relative)
        uri = f"file:///bench/{relative}"
        engine.open_document(uri, text, 1, "python")
        for cursor in places(text, args.places_per_file):
            engine.complete(uri, cursor)  # encodes the prompt of this place
            cache = engine.active_region(uri).cache
            row: dict = {"file": relative, "cursor": cursor}
            for repeat in range(args.repeats):
                started = time.perf_counter()
                plain = cache.generate(args.tokens, lambda token, log_prob: True)
                seconds["plain"].append(time.perf_counter() - started)
                # Alternate which drafter runs first, so neither always follows plain decoding.
                order = list(drafters) if repeat % 2 == 0 else list(reversed(drafters))
                for name in order:
                    lookup = drafters[name]()
                    started = time.perf_counter()
                    fast = cache.generate(args.tokens, lambda token, log_prob: True, draft=lookup)
                    seconds[name].append(time.perf_counter() - started)
                    mismatches += plain != fast
                    if repeat == 0:
                        counts[name]["drafted"] += lookup.drafted
                        counts[name]["accepted"] += lookup.accepted
                        counts[name]["passes"] += len(fast) - 1 - lookup.accepted
                        row[f"accepted_{name}"] = lookup.accepted
            passes_plain += len(plain) - 1
            rows.append(row)
        engine.close_document(uri)
        engine.release_closed()
    result = {
        "model": loaded.name,
        "threads": args.threads,
        "places": len(rows),
        "tokens_per_place": args.tokens,
        "draft_tokens": args.draft_tokens,
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
