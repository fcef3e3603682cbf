"""What a deletion + next-token logits costs after the machine sat idle, against back to back.

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_THREAD_TIMEOUT=4 python -m benchmarks.bench_idle_pass

A deletion under PIE is a move of the cached suffix plus one pass that re-feeds the last token
(`EditableCache.next_token_logits`): one full read of the weights, like a decode step. In an
editor that pass comes after the user paused, and in `bench_llamacpp` after the other engine's
case. This times it on the Qwen2.5-Coder-0.5B shape (random float32, 2,048-token document, a
12-token line deleted at token 64), in three settings taken in turn, --repeats times:
- back to back: right after the previous repetition;
- after idle: after --idle-s seconds of sleep;
- after streaming: right after reading --stream-mb of other memory eight times (what another
  engine's decode does to the caches).
Results go to benchmarks/results/idle_pass.json. Run on a quiet machine (pause training).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_edit_latency import QWEN_05B_SHAPE, shaped_model
from benchmarks.machine import machine_record
from cache_engine.kv.editable_cache import EditableCache
from cache_engine.kv.token_edits import TokenEdit

RESULTS = Path(__file__).parent / "results" / "idle_pass.json"
DOCUMENT_TOKENS = 2048
LINE = (64, 76)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--idle-s", type=float, default=0.5)
    parser.add_argument("--stream-mb", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = shaped_model(QWEN_05B_SHAPE)
    rng = random.Random(0)
    document = [rng.randrange(1000, 30000) for _ in range(DOCUMENT_TOKENS)]
    base = EditableCache(model, strategy="pie", initial_capacity=DOCUMENT_TOKENS + 64)
    base.reset(document)
    other = np.ones(args.stream_mb * 2**20 // 8)

    def deletion() -> tuple[float, float]:
        """(ms of the move, ms of the re-fed pass) on a fresh clone of the document."""
        cache = base.clone(strategy="pie")
        started = time.perf_counter()
        cache.apply_edits([TokenEdit.delete(*LINE)])
        moved = time.perf_counter()
        cache.next_token_logits().numpy().copy()
        done = time.perf_counter()
        return (moved - started) * 1000, (done - moved) * 1000

    settings = ("back to back", "after idle", "after streaming")
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in settings}
    deletion()  # the first pass pays for faults in the clone's memory
    for repeat in range(args.repeats):
        samples["back to back"].append(deletion())
        time.sleep(args.idle_s)
        samples["after idle"].append(deletion())
        for _ in range(8):
            other.sum()
        samples["after streaming"].append(deletion())
        print(
            f"[{repeat + 1}/{args.repeats}] "
            + ", ".join(f"{name} {sum(samples[name][-1]):.1f} ms" for name in settings),
            flush=True,
        )
    result = {
        "machine": machine_record(args.threads),
        "shape": "qwen2.5-coder-0.5b, random float32",
        "document_tokens": DOCUMENT_TOKENS,
        "deleted_tokens": list(LINE),
        "idle_s": args.idle_s,
        "stream_mb": args.stream_mb,
        "settings": {
            name: {
                "median_ms": statistics.median(sum(s) for s in values),
                "median_move_ms": statistics.median(s[0] for s in values),
                "median_pass_ms": statistics.median(s[1] for s in values),
                "samples_ms": [round(sum(s), 2) for s in values],
            }
            for name, values in samples.items()
        },
    }
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    for name, summary in result["settings"].items():
        print(
            f"{name}: {summary['median_ms']:.1f} ms (move {summary['median_move_ms']:.1f}, "
            f"pass {summary['median_pass_ms']:.1f})"
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
