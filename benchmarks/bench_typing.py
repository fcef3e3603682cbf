"""Ghost text while typing and after a cursor trip, per strategy and refresh policy.

    python -m benchmarks.bench_typing                 # both benchmarks, default model
    python -m benchmarks.bench_typing --quick         # fewer lines, a smoke run

Typing: in held-out code (packages outside the training corpus), delete a real line's text
after its indentation, make one far edit (a comment line about 30 lines above), then type the
line back one character at a time with a completion after every keystroke. Every policy runs
the same script on its own engine; its ghost text is compared with `full`'s at the same
keystroke in the same layout. Run without pauses, and with a 300 ms pause after every 8
keystrokes in which the idle refresh (`CompletionEngine.prepare`) runs, as the server does.

Cursor trip: complete near the bottom of a long file, type a comment line near the top with a
completion after every keystroke, go back and complete. Reports the tokens re-encoded on
return as a share of the prompt, and the return's latency to the first generated token against
a fresh encode of the same prompt (both with one new token, so decoding does not hide it).

Results go to benchmarks/results/typing.json. Run on a quiet machine (pause training).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks.machine import machine_record
from cache_engine.completion.engine import CompletionEngine
from cache_engine.completion.settings import CompletionSettings
from cache_engine.model.loading import LoadedModel, load_model
from cache_engine.text.text_change import TextChange

RESULTS = Path(__file__).parent / "results" / "typing.json"
URI = "file:///bench/typing.py"
# Code the default model never saw (corpus.EVALUATION_PACKAGES), with files long enough for
# the prompt window to matter.
FILES = ("click/core.py", "rich/console.py", "typer/main.py", "tqdm/std.py")
PAUSE_EVERY = 8
PAUSE_MS = 300
BUCKETS = ((1, 5), (6, 15), (16, 40), (41, 10_000))


@dataclass(frozen=True)
class Policy:
    name: str
    settings: dict[str, object]


POLICIES = (
    Policy("full", {"strategy": "full"}),
    Policy("prefix", {"strategy": "prefix"}),
    Policy("pie, no refresh", {"strategy": "pie", "stale_budget": -1}),
    Policy(
        "pie, refresh 16 after edit",
        {"strategy": "pie", "stale_budget": -1, "refresh_after_edit": 16},
    ),
    Policy(
        "pie, stale budget 0, unbounded",
        {"strategy": "pie", "stale_budget": 0, "max_refresh_tokens": 1 << 20, "max_refresh_ms": 0},
    ),
    Policy(
        "pie, stale budget 0, 512 a request, no time limit",
        {"strategy": "pie", "stale_budget": 0, "max_refresh_tokens": 512, "max_refresh_ms": 0},
    ),
    Policy(
        "pie, stale budget 0, 512 and 100 ms a request",
        {"strategy": "pie", "stale_budget": 0, "max_refresh_tokens": 512, "max_refresh_ms": 100},
    ),
)


def source(relative: str) -> str:
    package, _, rest = relative.partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{package} is not installed: pip install -e '.[held-out]'")
    return (Path(spec.origin).parent / rest).read_text()


def target_lines(text: str, count: int) -> list[int]:
    """Line indices of ordinary code lines (20-60 characters after indentation) in the
    second half of the file, spread evenly."""
    lines = text.splitlines(keepends=True)
    candidates = [
        i
        for i, line in enumerate(lines)
        if i > max(len(lines) // 2, 60)
        and 20 <= len(line.strip()) <= 60
        and not line.strip().startswith(("#", '"', "'", "@"))
    ]
    step = max(1, len(candidates) // count)
    return candidates[::step][:count]


def typing_script(text: str, line_index: int) -> tuple[str, int, str, int]:
    """(text with the line's body deleted, cursor, the body to type, far-edit offset)."""
    lines = text.splitlines(keepends=True)
    line = lines[line_index]
    indent = len(line) - len(line.lstrip())
    body = line[indent:].rstrip("\n")
    start = sum(len(x) for x in lines[:line_index]) + indent
    edited = text[:start] + text[start + len(body) :]
    far_line = max(0, line_index - 30)
    far = sum(len(x) for x in lines[:far_line])
    return edited, start, body, far


def run_typing(
    loaded: LoadedModel, policy: Policy, base: CompletionSettings, scripts, *, pauses: bool
) -> list[dict[str, object]]:
    engine = CompletionEngine(loaded, replace(base, **policy.settings))
    records = []
    for file_index, (text, cursor, body, far) in enumerate(scripts):
        uri = f"{URI}#{file_index}"
        engine.open_document(uri, text, 1, "python")
        engine.complete(uri, cursor)
        version = 2
        note = "# far edit\n"
        engine.change_document(uri, version, [TextChange(far, far, note)])
        cursor += len(note)
        since_exact = 0
        for typed, char in enumerate(body, start=1):
            version += 1
            engine.change_document(uri, version, [TextChange(cursor, cursor, char)])
            cursor += 1
            started = time.perf_counter()
            completion = engine.complete(uri, cursor)
            seconds = time.perf_counter() - started
            region = engine.active_region(uri)
            exact = (
                region is not None and region.cache is not None and (region.cache.stale_tokens <= 1)
            )
            since_exact = 0 if exact and completion.source == "model" else since_exact + 1
            idle_seconds = None
            if pauses and typed % PAUSE_EVERY == 0:
                idle_started = time.perf_counter()
                engine.prepare(uri, cursor)
                idle_seconds = time.perf_counter() - idle_started
                since_exact = 0
            records.append(
                {
                    "file": file_index,
                    "typed": typed,
                    "text": completion.text,
                    "source": completion.source,
                    "seconds": seconds,
                    "since_exact": since_exact,
                    "idle_seconds": idle_seconds,
                }
            )
        engine.close_document(uri)
        engine.release_closed()
    return records


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(records, reference) -> dict[str, object]:
    equal = [r["text"] == f["text"] for r, f in zip(records, reference)]
    buckets = {}
    for low, high in BUCKETS:
        # Keystrokes since the last exact encode, counted in the reference-free run itself.
        picked = [e for e, r in zip(equal, records) if low <= r["since_exact"] + 1 <= high]
        key = f"{low}-{high}" if high < 10_000 else f"{low}+"
        buckets[key] = {
            "n": len(picked),
            "equal_share": sum(picked) / len(picked) if picked else None,
        }
    seconds = [r["seconds"] for r in records]
    idle = [r["idle_seconds"] for r in records if r["idle_seconds"] is not None]
    return {
        "requests": len(records),
        "equal_to_full": sum(equal) / len(equal),
        "by_keystrokes_since_exact": buckets,
        "p50_ms": 1000 * statistics.median(seconds),
        "p95_ms": 1000 * percentile(seconds, 0.95),
        "total_seconds": sum(seconds),
        "idle_refresh_p95_ms": 1000 * percentile(idle, 0.95) if idle else None,
    }


def cursor_trip(loaded: LoadedModel, base: CompletionSettings, text: str) -> dict[str, object]:
    """Complete at the bottom, type a line near the top, come back."""
    lines = text.splitlines(keepends=True)
    # Both at the end of a line (mid-line, before code, nothing is offered): the end of the
    # line at 80 % of the file, and a new line typed after line 2.
    bottom = sum(len(x) for x in lines[: int(len(lines) * 0.8)]) - 1
    top = sum(len(x) for x in lines[:2]) - 1
    results = {}
    base = replace(base, max_new_tokens=1)
    for name, changes in (
        ("pie, 4 regions", {"strategy": "pie", "max_regions": 4}),
        ("pie, 1 region", {"strategy": "pie", "max_regions": 1}),
        ("prefix, 1 region", {"strategy": "prefix", "max_regions": 1}),
    ):
        engine = CompletionEngine(loaded, replace(base, **changes))
        engine.open_document(URI, text, 1, "python")
        engine.complete(URI, bottom)
        version, cursor, at = 1, top, bottom
        for char in "\n# a comment typed by hand":
            version += 1
            engine.change_document(URI, version, [TextChange(cursor, cursor, char)])
            cursor += 1
            at += 1
            engine.complete(URI, cursor)
        started = time.perf_counter()
        engine.complete(URI, at)
        seconds = time.perf_counter() - started
        stats = engine.stats(URI)[URI]
        prompt = len(engine.active_region(URI).cache)
        # A fresh encode at the same place, for the latency ratio.
        fresh_times = []
        for _ in range(3):
            fresh = CompletionEngine(loaded, replace(base, strategy="full"))
            fresh.open_document(URI, engine.documents.snapshot(URI).text, 1, "python")
            started = time.perf_counter()
            fresh.complete(URI, at)
            fresh_times.append(time.perf_counter() - started)
        fresh_seconds = statistics.median(fresh_times)
        results[name] = {
            "prompt_tokens": prompt,
            "reencoded_on_return": stats["last_edit"]["tokens_encoded"],
            "reencoded_share": stats["last_edit"]["tokens_encoded"] / prompt,
            "return_ms": 1000 * seconds,
            "fresh_encode_ms": 1000 * fresh_seconds,
            "latency_vs_fresh": seconds / fresh_seconds,
            "regions": stats["regions"],
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--lines-per-file", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--fim-layouts", default="psm,spm", help="comma-separated layouts to run the typing in"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    base = CompletionSettings(max_new_tokens=24)
    files = FILES[:2] if args.quick else FILES
    per_file = 1 if args.quick else args.lines_per_file
    scripts = []
    for relative in files:
        text = source(relative)
        for line in target_lines(text, per_file):
            scripts.append(typing_script(text, line))
    typing: dict[str, object] = {}
    for layout in args.fim_layouts.split(","):
        settings = replace(base, fim_layout=layout)
        for pauses in (False, True):
            runs = {
                p.name: run_typing(loaded, p, settings, scripts, pauses=pauses) for p in POLICIES
            }
            reference = runs["full"]
            typing[f"{layout}, {'with' if pauses else 'without'} pauses"] = {
                name: summarize(records, reference) for name, records in runs.items()
            }
    trip = {relative: cursor_trip(loaded, base, source(relative)) for relative in files[:3]}
    result = {
        "model": loaded.name,
        "model_fim_layouts": list(CompletionEngine(loaded, base).model_fim_layouts),
        "machine": machine_record(args.threads),
        "files": list(files),
        "keystrokes_per_policy": sum(len(s[2]) for s in scripts),
        "pause": {"every_keystrokes": PAUSE_EVERY, "ms": PAUSE_MS},
        "typing": typing,
        "cursor_trip": trip,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    for mode, table in typing.items():
        print(f"\n{mode}: policy | equal to full | p50 ms | p95 ms | total s")
        for name, row in table.items():
            print(
                f"  {name:28s} {row['equal_to_full']:6.1%} {row['p50_ms']:7.1f} "
                f"{row['p95_ms']:7.1f} {row['total_seconds']:7.2f}"
            )
    print("\ncursor trip: file | policy | re-encoded share | return/fresh")
    for relative, rows in trip.items():
        for name, row in rows.items():
            print(
                f"  {relative:18s} {name:16s} {row['reencoded_share']:6.1%} "
                f"{row['latency_vs_fresh']:5.2f}"
            )
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
