"""How far prompt-lookup speculation can go on the default model, whatever a verify pass costs.

    python -m benchmarks.speculation_ceiling   # results in benchmarks/results/speculation_ceiling.json

At bench_speculation's places (line ends in click, rich, typer and tqdm), the greedy tokens are
decoded once; the drafter is then replayed against them, pass by pass: each pass keeps the
longest drafted prefix that greedy decoding agrees with, plus the pass's own token. No timing is
involved, so it runs on a busy machine. With verification free (a pass of 1 + k rows costing one
step), the speed-up can be no more than plain passes over drafted passes: the ceiling for that
drafter. `--slope s` also reports the speed-up when a pass of 1 + k rows costs 1 + s·k steps.
The greedy tokens are chosen as the server chooses them, by the model mixed with the document's
n-grams at the shipped `documentNgramWeight` (`--ngram-weight 0`: the model alone).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.bench_speculation import places
from benchmarks.bench_typing import FILES, source
from cache_engine.completion.engine import CompletionEngine
from cache_engine.completion.settings import CompletionSettings
from cache_engine.completion.speculation import PromptLookup
from cache_engine.model.loading import load_model

RESULTS = Path(__file__).parent / "results" / "speculation_ceiling.json"
# (prompt ids, greedy tokens) at one place.
Run = tuple[list[int], list[int]]


def greedy_runs(tokens: int, places_per_file: int, ngram_weight: float) -> list[Run]:
    """(prompt ids, greedy tokens) at each place."""
    loaded = load_model("default")
    settings = CompletionSettings(max_new_tokens=1, document_ngram_weight=ngram_weight)
    engine = CompletionEngine(loaded, settings)
    runs = []
    for relative in FILES:
        text = source(relative)
        uri = f"file:///bench/{relative}"
        engine.open_document(uri, text, 1, "python")
        for cursor in places(text, places_per_file):
            engine.complete(uri, cursor)
            cache = engine.active_region(uri).cache
            choose = engine.next_token_chooser(uri)
            greedy = cache.generate(tokens, lambda token, log_prob: True, choose=choose)
            runs.append((cache.token_ids, greedy))
        engine.close_document(uri)
        engine.release_closed()
    return runs


def replay(runs: list[Run], make_drafter: Callable[[], PromptLookup], slopes: list[float]) -> dict:
    """Passes, drafted and kept tokens, and the speed-up at each cost slope, of one drafter."""
    passes = drafted = kept = 0
    cost = dict.fromkeys(slopes, 0.0)
    for prompt, greedy in runs:
        drafter = make_drafter()
        done = 1  # the first token comes from the prompt's logits
        while done < len(greedy):
            proposal = drafter(prompt + greedy[:done])[: len(greedy) - done]
            agreed = 0
            while agreed < len(proposal) and proposal[agreed] == greedy[done + agreed]:
                agreed += 1
            if proposal:
                drafter.record(agreed, len(proposal))
            passes += 1
            drafted += len(proposal)
            kept += agreed
            for slope in slopes:
                cost[slope] += 1 + slope * len(proposal)
            done += agreed + 1
    plain = sum(len(greedy) - 1 for _, greedy in runs)
    return {
        "passes": passes,
        "drafted_tokens": drafted,
        "kept_tokens": kept,
        "ceiling_free_verification": plain / passes,
        "speed_up_at_slope": {str(slope): plain / total for slope, total in cost.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--places-per-file", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--slope", type=float, nargs="*", default=[0.04, 0.17])
    parser.add_argument(
        "--ngram-weight", type=float, default=CompletionSettings().document_ngram_weight
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    runs = greedy_runs(args.tokens, args.places_per_file, args.ngram_weight)
    drafters = {
        "shipped (adaptive, at most 8)": lambda: PromptLookup(8),
        "always 8": lambda: PromptLookup(8, adaptive=False),
        "always 4": lambda: PromptLookup(4, adaptive=False),
        "always 2": lambda: PromptLookup(2, adaptive=False),
        "n-grams of 1 to 3 tokens": lambda: PromptLookup(8, min_ngram=1),
    }
    result = {
        "model": "default",
        "places": len(runs),
        "tokens_per_place": args.tokens,
        "document_ngram_weight": args.ngram_weight,
        "plain_passes": sum(len(greedy) - 1 for _, greedy in runs),
        "slopes": "a pass of 1 + k rows costs 1 + slope * k one-token steps",
        "drafters": {name: replay(runs, make, args.slope) for name, make in drafters.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
