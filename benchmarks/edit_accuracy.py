"""Accuracy and cost of editing the KV cache: insertion, deletion and multi-place edits (PIE §4).

    python -m benchmarks.edit_accuracy                       # default run (≤ 15 min on 2 cores)
    python -m benchmarks.edit_accuracy --quick               # CI smoke run (< 60 s)
    python -m benchmarks.edit_accuracy --source ~/project --lengths 1024 --k 5 --n-samples 4

Tasks come from code the model never saw: the held-out standard-library modules, plus every
source file under each --source folder. A task is a context of at most N tokens (the *final*
text) and its target, the next non-blank line. The cache is built on the pre-edit text, which
differs from the context by the edited lines:
- insertion: k contiguous context lines are removed, then inserted back;
- deletion: k lines from elsewhere in the same file are added, then deleted;
- multi: one edit near the start, one in the middle and one near the end, mixing insertions and
  deletions, applied as one batch (k lines each).
An edit near the start sits in the first 3–15 % of the context's lines, one in the middle is
centred in 45–55 %, one near the end ends in 85–97 %; every edited block holds some code, and the
context's first and last lines stay untouched. Configurations are kind × k × place × length
(multi: kind × k × length), each run --n-samples times, round-robin, so that a run cut short by
--max-minutes (14 by default) or Ctrl-C stays balanced; it still writes what it measured.
The text edit goes through `IncrementalTokenizer.edits_for_text`, as in the language server, and
the resulting ids are checked against a fresh tokenization of the context.

The pre-edit cache is encoded once per task (`full`); each strategy edits its own clone, reads the
next-token logits and greedily decodes the next line. Reported per strategy: exact match and edit
similarity against the true line, agreement with `full`, KL(full ‖ strategy) of the next-token
distribution, tokens encoded and reused, estimated FLOPs, and wall time.

The context ends at the end of its last non-blank line, without the line break: the tokenizer
merges a line break with the next line's indentation ("\\n   " is one token), so a context that
ends in a bare "\\n" puts the model on a token boundary it never saw in training. The model
produces the line break and indentation itself; its predicted line is the first non-blank line
after the context's last line.

FLOPs of encoding m tokens at positions i..i+m−1 (one forward pass):
    2·P·m  +  4·L·A·Σ_{t=i}^{i+m−1} (t+1)  +  2·d·V
P = non-embedding parameters, L = layers, A = query heads × head_dim, d = hidden size,
V = vocabulary. The first term is the weight matmuls, the second QKᵀ and attention·V over the
t+1 keys token t sees, the third the LM head on the one position whose logits are kept. `pie`
adds 3 FLOPs per re-rotated key element (3·L·kv_heads·head_dim per moved token); `conflict` moves
without arithmetic. Generation is the same for every strategy and is not counted.

Outputs, under --output-dir (benchmarks/results, or benchmarks/results/quick with --quick):
edit_accuracy.json (settings, every task and every strategy's row, summaries), edit_accuracy.md
(tables) and, with matplotlib installed (the `bench` extra), edit_accuracy_em.png,
edit_accuracy_cost.png and edit_accuracy_distance.png. Torch runs one thread by default: on a
shared machine two spin-waiting OpenMP threads made forward passes 20x slower.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.machine import machine_record
from cache_engine.kv.editable_cache import STRATEGIES, EditableCache
from cache_engine.kv.token_edits import TokenEdit
from cache_engine.model.corpus import collect_sources
from cache_engine.model.loading import DEFAULT_MODEL_NAME, LoadedModel, load_model
from cache_engine.text.incremental_tokenizer import IncrementalTokenizer, TextEditPlan

RESULTS_DIR = Path(__file__).parent / "results"
KINDS = ("insertion", "deletion", "multi")
PLACES = ("start", "middle", "end")
# Where an edit sits, as fractions of the context's lines. The band holds the edit's first line
# for "start", its centre for "middle" and its last line for "end", so that a large block still
# sits where its place says.
PLACE_BANDS = {"start": (0.03, 0.15), "middle": (0.45, 0.55), "end": (0.85, 0.97)}
MULTI_EDITS = 3
DISTANCE_BINS = (0, 32, 128, 512, 2048)
# One task of each of the 63 default configurations took 84 s (1.3 s a task, one thread, load
# average 5 from other jobs): 5 rounds is about 7 minutes, leaving room for a machine twice as busy.
DEFAULT_N_SAMPLES = 5
# A safety net for the ≤ 15-minute budget of the default run on a busy machine.
DEFAULT_MAX_MINUTES = 14.0


@dataclass
class Settings:
    kinds: tuple[str, ...] = KINDS
    lengths: tuple[int, ...] = (512, 1024, 2048)
    ks: tuple[int, ...] = (1, 5, 20)
    places: tuple[str, ...] = PLACES
    n_samples: int = DEFAULT_N_SAMPLES
    seed: int = 0
    max_minutes: float | None = None
    max_new_tokens: int = 48
    sources: tuple[str, ...] = ()
    extensions: tuple[str, ...] = (".py",)


@dataclass(frozen=True)
class SourceText:
    name: str
    lines: list[str]  # with their line breaks
    line_tokens: list[int]  # tokens of each line encoded alone: a budget estimate, not exact


@dataclass(frozen=True)
class LineEdit:
    kind: str  # "insertion" or "deletion"
    at: int  # index in the final context's lines: the inserted block's start, or the deletion point
    lines: tuple[str, ...]  # the inserted lines, or the lines present before the deletion


@dataclass
class Task:
    kind: str
    k: int
    place: str
    length: int
    sample: int
    source: str
    target_line: int  # 1-based line number of the target in its file
    context: str  # the final text
    pre_text: str  # the text the cache is built on
    target: str
    edits: list[LineEdit] = field(default_factory=list)


# ---- sources -------------------------------------------------------------------------------


def read_sources(itok: IncrementalTokenizer, settings: Settings) -> list[SourceText]:
    """Held-out stdlib modules plus every matching file under each --source folder."""
    _, held_out = collect_sources()
    named = [(f"stdlib/{f.relative_path}", f.text) for f in held_out]
    for folder in settings.sources:
        root = Path(folder).expanduser()
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in settings.extensions:
                try:
                    named.append((str(path), path.read_text(encoding="utf-8")))
                except (UnicodeDecodeError, OSError):
                    continue
    sources = []
    for name, text in named:
        lines = text.splitlines(keepends=True)
        if len(lines) < 8:
            continue
        counts = [len(itok.encode(line)) for line in lines]
        sources.append(SourceText(name, lines, counts))
    return sources


def eligible_targets(sources: Sequence[SourceText], length: int) -> list[tuple[int, int]]:
    """(source, line) pairs whose line is non-blank with about `length` tokens of text before it."""
    pairs = []
    for s, source in enumerate(sources):
        before = 0
        for t, line in enumerate(source.lines):
            if before >= length and line.strip():
                pairs.append((s, t))
            before += source.line_tokens[t]
    return pairs


def context_lines(
    itok: IncrementalTokenizer, source: SourceText, target: int, length: int
) -> tuple[int, list[str]] | None:
    """(first line, lines): whole lines before the target up to the last non-blank one, within
    `length` tokens."""
    end = target - 1
    while end >= 0 and not source.lines[end].strip():
        end -= 1
    if end < 0:
        return None
    start, budget = end, source.line_tokens[end]
    while start > 0 and budget + source.line_tokens[start - 1] <= length:
        start -= 1
        budget += source.line_tokens[start]
    lines = list(source.lines[start : end + 1])
    lines[-1] = lines[-1].rstrip("\r\n")
    # Lines encoded alone only estimate the joint tokenization (which merges each line break
    # with the next line's indentation): trim until it truly fits, then grow while it still does.
    while len(lines) > 1 and len(itok.encode("".join(lines))) > length:
        lines.pop(0)
        start += 1
    while start > 0 and len(itok.encode(source.lines[start - 1] + "".join(lines))) <= length:
        start -= 1
        lines.insert(0, source.lines[start])
    return start, lines


# ---- edits ---------------------------------------------------------------------------------


def _has_code(lines: Sequence[str]) -> bool:
    return any(line.strip() for line in lines)


def place_range(place: str, kind: str, k: int, n: int) -> range:
    """Feasible `at` values for an edit at `place` in a context of n lines.

    The first and last context lines stay untouched: the last one produces the next-token logits.
    """
    low, high = PLACE_BANDS[place]
    lo, hi = round(low * n), round(high * n)
    size = k if kind == "insertion" else 0
    if place == "middle":
        lo, hi = lo - size // 2, hi - size // 2
    elif place == "end":
        lo, hi = lo - size, hi - size
    lo = max(lo, 1)
    hi = min(hi, n - 1 - size)
    return range(lo, hi + 1)


def foreign_lines(
    rng: random.Random, source: SourceText, k: int, avoid: tuple[int, int]
) -> tuple[str, ...] | None:
    """k contiguous lines of the file from outside the context (anywhere if the file is short)."""
    n = len(source.lines)
    if n < k:
        return None
    starts = [f for f in range(n - k + 1) if f + k <= avoid[0] or f > avoid[1]]
    starts = starts or list(range(n - k + 1))
    for _ in range(20):
        f = rng.choice(starts)
        block = [line if line.endswith("\n") else line + "\n" for line in source.lines[f : f + k]]
        if _has_code(block):
            return tuple(block)
    return None


def draw_edit(
    rng: random.Random,
    kind: str,
    place: str,
    k: int,
    context: list[str],
    source: SourceText,
    span: tuple[int, int],
) -> LineEdit | None:
    choices = place_range(place, kind, k, len(context))
    if not choices:
        return None
    for _ in range(20):
        at = rng.choice(choices)
        if kind == "insertion":
            block = tuple(context[at : at + k])
            if _has_code(block):
                return LineEdit(kind, at, block)
        else:
            block = foreign_lines(rng, source, k, span)
            return None if block is None else LineEdit(kind, at, block)
    return None


def _overlaps(edits: Sequence[LineEdit]) -> bool:
    # Edits a line apart stay separate text regions; closer ones would merge into one.
    spans = sorted((e.at, e.at + (len(e.lines) if e.kind == "insertion" else 0)) for e in edits)
    return any(b[0] <= a[1] for a, b in pairwise(spans))


def draw_edits(
    rng: random.Random,
    kind: str,
    place: str,
    k: int,
    context: list[str],
    source: SourceText,
    span: tuple[int, int],
) -> list[LineEdit] | None:
    if kind != "multi":
        edit = draw_edit(rng, kind, place, k, context, source, span)
        return None if edit is None else [edit]
    for _ in range(30):
        kinds = [rng.choice(("insertion", "deletion")) for _ in range(MULTI_EDITS)]
        if len(set(kinds)) == 1:
            kinds[rng.randrange(MULTI_EDITS)] = (
                "deletion" if kinds[0] == "insertion" else "insertion"
            )
        edits = [
            draw_edit(rng, sub_kind, sub_place, k, context, source, span)
            for sub_kind, sub_place in zip(kinds, PLACES, strict=True)
        ]
        if all(e is not None for e in edits) and not _overlaps(edits):
            return edits
    return None


def pre_edit_lines(context: list[str], edits: Sequence[LineEdit]) -> list[str]:
    """Undo the edits on the final lines, bottom up so earlier indices stay valid."""
    lines = list(context)
    for edit in sorted(edits, key=lambda e: e.at, reverse=True):
        if edit.kind == "insertion":
            del lines[edit.at : edit.at + len(edit.lines)]
        else:
            lines[edit.at : edit.at] = edit.lines
    return lines


def build_task(
    itok: IncrementalTokenizer,
    sources: Sequence[SourceText],
    targets: Sequence[tuple[int, int]],
    config: tuple[str, int, str, int],
    sample: int,
    seed: int,
) -> Task | None:
    kind, k, place, length = config
    # Seeded by the configuration, so a task does not depend on which others run.
    rng = random.Random(f"{seed}:{kind}:{k}:{place}:{length}:{sample}")
    for _ in range(30):
        s, t = rng.choice(targets)
        source = sources[s]
        found = context_lines(itok, source, t, length)
        if found is None:
            continue
        first, context = found
        edits = draw_edits(rng, kind, place, k, context, source, (first, t))
        if edits is None:
            continue
        return Task(
            kind=kind,
            k=k,
            place=place,
            length=length,
            sample=sample,
            source=source.name,
            target_line=t + 1,
            context="".join(context),
            pre_text="".join(pre_edit_lines(context, edits)),
            target=source.lines[t].rstrip("\r\n"),
            edits=edits,
        )
    return None


def configurations(settings: Settings) -> list[tuple[str, int, str, int]]:
    configs = []
    for kind in settings.kinds:
        places = ("start+middle+end",) if kind == "multi" else settings.places
        for length in settings.lengths:
            for k in settings.ks:
                for place in places:
                    configs.append((kind, k, place, length))
    return configs


def planned_tasks(settings: Settings) -> Iterator[tuple[tuple[str, int, str, int], int]]:
    # Round-robin over configurations, so a run stopped by --max-minutes stays balanced.
    configs = configurations(settings)
    for sample in range(settings.n_samples):
        for config in configs:
            yield config, sample


# ---- measurement ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FlopModel:
    non_embedding_params: int
    layers: int
    attention_width: int
    kv_width: int
    hidden: int
    vocab: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> FlopModel:
        config = model.config
        embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
        embeddings |= {id(p) for p in model.get_output_embeddings().parameters()}
        params = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(
            non_embedding_params=params,
            layers=config.num_hidden_layers,
            attention_width=config.num_attention_heads * head_dim,
            kv_width=kv_heads * head_dim,
            hidden=config.hidden_size,
            vocab=config.vocab_size,
        )

    def encode(self, start: int, count: int) -> float:
        if count <= 0:
            return 0.0
        keys_seen = count * start + count * (count + 1) / 2
        return (
            2.0 * self.non_embedding_params * count
            + 4.0 * self.layers * self.attention_width * keys_seen
            + 2.0 * self.hidden * self.vocab
        )

    def rotate(self, moved: int) -> float:
        return 3.0 * self.layers * self.kv_width * moved


def final_spans(edits: Sequence[TokenEdit]) -> list[tuple[int, int]]:
    """Each edit's [start, end) in the edited sequence."""
    spans, shift = [], 0
    for edit in sorted(edits, key=lambda e: e.start):
        start = edit.start + shift
        spans.append((start, start + len(edit.new_ids)))
        shift += edit.delta
    return spans


def strategy_flops(
    flops: FlopModel, strategy: str, plan: TextEditPlan, old_len: int, moved: int
) -> tuple[float, int]:
    """(FLOPs, tokens encoded) of one strategy's edit, the next-token re-feed included."""
    new_len = len(plan.new_ids)
    if strategy == "full":
        return flops.encode(0, new_len), new_len
    keep = min(e.start for e in plan.edits)
    if strategy == "prefix":
        if keep == new_len:
            return flops.encode(new_len - 1, 1), 1
        return flops.encode(keep, new_len - keep), new_len - keep
    total, encoded = 0.0, 0
    for start, end in final_spans(plan.edits):
        total += flops.encode(start, end - start)
        encoded += end - start
    last = max(plan.edits, key=lambda e: e.start)
    # An edit that reaches the end with new tokens yields exact logits; otherwise the last token
    # is stale and re-fed.
    if not (last.end == old_len and last.new_ids):
        total += flops.encode(new_len - 1, 1)
        encoded += 1
    if strategy == "pie":
        total += flops.rotate(moved)
    return total, encoded


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def edit_similarity(predicted: str, truth: str) -> float:
    a, b = predicted.strip(), truth.strip()
    if not a and not b:
        return 1.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))


def first_full_line(text: str) -> str | None:
    """The first non-blank line after the context's last line, once its line break is out."""
    parts = text.split("\n")
    for part in parts[1:-1]:
        if part.strip():
            return part
    return None


def greedy_next_line(
    cache: EditableCache, itok: IncrementalTokenizer, eos_ids: frozenset[int], max_new: int
) -> str:
    pieces: list[int] = []

    def keep_going(token: int, log_prob: float) -> bool:
        if token in eos_ids:
            return False
        pieces.append(token)
        return first_full_line(itok.decode(pieces)) is None

    cache.generate(max_new, keep_going)
    text = itok.decode(pieces)
    line = first_full_line(text)
    if line is None:
        # Stopped by eos or the token limit: judge the unfinished line.
        line = next((p for p in text.split("\n")[1:] if p.strip()), "")
    return line


def kl_divergence(reference: torch.Tensor, other: torch.Tensor) -> float:
    log_p = torch.log_softmax(reference.double(), dim=-1)
    log_q = torch.log_softmax(other.double(), dim=-1)
    return max(0.0, float((log_p.exp() * (log_p - log_q)).sum()))


def run_strategy(
    base: EditableCache,
    strategy: str,
    plan: TextEditPlan,
    loaded: LoadedModel,
    itok: IncrementalTokenizer,
    max_new: int,
) -> tuple[dict, torch.Tensor, list[int]]:
    cache = base.clone(strategy=strategy)
    started = time.perf_counter()
    stats = cache.apply_edits(plan.edits)
    logits = cache.next_token_logits().clone()
    edited = time.perf_counter()
    predicted = greedy_next_line(cache, itok, loaded.eos_token_ids, max_new)
    finished = time.perf_counter()
    row = {
        "predicted": predicted,
        "tokens_encoded_by_edit": stats.tokens_encoded,
        "tokens_reused": stats.tokens_reused,
        "tokens_moved": stats.tokens_moved,
        "edit_seconds": edited - started,
        "generate_seconds": finished - edited,
        "seconds": finished - started,
    }
    return row, logits, cache.token_ids


def run_task(
    task: Task, loaded: LoadedModel, itok: IncrementalTokenizer, flops: FlopModel, max_new: int
) -> dict:
    pre_ids = itok.encode(task.pre_text)
    plan = itok.edits_for_text(task.pre_text, pre_ids, task.context)
    fresh = itok.encode(task.context)
    capacity = max(len(pre_ids), len(fresh)) + max_new + 8
    base = EditableCache(loaded.model, strategy="full", initial_capacity=capacity)
    base.reset(pre_ids)
    spans = final_spans(plan.edits)
    record = {
        **{k: v for k, v in asdict(task).items() if k not in ("context", "pre_text", "edits")},
        "edits": [{"kind": e.kind, "at_line": e.at, "lines": len(e.lines)} for e in task.edits],
        "context_tokens": len(fresh),
        "pre_tokens": len(pre_ids),
        "token_edits": [[e.start, e.end, len(e.new_ids)] for e in plan.edits],
        "tokens_changed": sum(len(e.new_ids) + e.end - e.start for e in plan.edits),
        "distance_from_end": len(plan.new_ids) - max(end for _, end in spans) if spans else 0,
        "ids_match_fresh": plan.new_ids == fresh,
        "strategies": {},
    }
    if not plan.edits:
        record["skipped"] = "the edit changes no token"
        return record
    reference: torch.Tensor | None = None
    # `full` goes first: every other strategy is compared with its logits.
    for strategy in ("full", *(s for s in STRATEGIES if s != "full")):
        row, logits, ids = run_strategy(base, strategy, plan, loaded, itok, max_new)
        if reference is None:
            reference = logits
        cost, encoded = strategy_flops(flops, strategy, plan, len(pre_ids), row["tokens_moved"])
        row.update(
            flops=cost,
            tokens_encoded=encoded,  # the re-fed last token included
            cache_ids_match=ids == plan.new_ids,
            exact_match=row["predicted"].strip() == task.target.strip(),
            edit_similarity=edit_similarity(row["predicted"], task.target),
            kl_from_full=kl_divergence(reference, logits),
            max_logit_diff=float((reference - logits).abs().max()),
            top1_agrees=int(reference.argmax()) == int(logits.argmax()),
        )
        record["strategies"][strategy] = row
    full_line = record["strategies"]["full"]["predicted"]
    for row in record["strategies"].values():
        row["agrees_with_full"] = row["predicted"] == full_line
    return record


def run(loaded: LoadedModel, settings: Settings, *, progress: bool = True) -> dict:
    """Build and run every planned task; returns the results document."""
    itok = IncrementalTokenizer(loaded.tokenizer)
    sources = read_sources(itok, settings)
    flops = FlopModel.of(loaded.model)
    targets = {n: eligible_targets(sources, n) for n in settings.lengths}
    started = time.perf_counter()
    deadline = None if settings.max_minutes is None else started + 60 * settings.max_minutes
    plan = list(planned_tasks(settings))
    records: list[dict] = []
    unbuilt: list[dict] = []
    stopped_early = False
    bar = tqdm(plan, desc="edit tasks", unit="task", disable=not progress)
    try:
        for config, sample in bar:
            if deadline is not None and time.perf_counter() > deadline:
                stopped_early = True
                break
            kind, k, place, length = config
            task = None
            if targets[length]:
                task = build_task(itok, sources, targets[length], config, sample, settings.seed)
            if task is None:
                unbuilt.append({"kind": kind, "k": k, "place": place, "length": length})
                continue
            records.append(run_task(task, loaded, itok, flops, settings.max_new_tokens))
    except KeyboardInterrupt:
        # Ctrl-C ends the run like --max-minutes: what was measured is still written.
        stopped_early = True
    finally:
        bar.close()
    return {
        "settings": asdict(settings),
        "model": describe_model(loaded, flops),
        "machine": machine_record(torch.get_num_threads(), platform=platform.platform()),
        "sources": [s.name for s in sources],
        "seconds": time.perf_counter() - started,
        "planned": len(plan),
        "stopped_early": stopped_early,
        "unbuilt": unbuilt,
        "records": records,
        "summary": summarize(records),
    }


def describe_model(loaded: LoadedModel, flops: FlopModel) -> dict:
    return {
        "name": loaded.name,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "flop_model": asdict(flops),
    }


# ---- summaries -----------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def summarize_group(records: Sequence[dict], strategy: str) -> dict:
    rows = [r["strategies"][strategy] for r in records]
    full = [r["strategies"]["full"] for r in records]
    full_flops = sum(row["flops"] for row in full)
    return {
        "n": len(rows),
        "exact_match": _mean([row["exact_match"] for row in rows]),
        "edit_similarity": _mean([row["edit_similarity"] for row in rows]),
        "agrees_with_full": _mean([row["agrees_with_full"] for row in rows]),
        "top1_agrees": _mean([row["top1_agrees"] for row in rows]),
        "kl_mean": _mean([row["kl_from_full"] for row in rows]),
        "kl_median": statistics.median(row["kl_from_full"] for row in rows) if rows else math.nan,
        "max_logit_diff": max((row["max_logit_diff"] for row in rows), default=math.nan),
        "tokens_encoded": _mean([row["tokens_encoded"] for row in rows]),
        "tokens_reused": _mean([row["tokens_reused"] for row in rows]),
        "flops": _mean([row["flops"] for row in rows]),
        "flops_vs_full": sum(row["flops"] for row in rows) / full_flops if full_flops else math.nan,
        "edit_ms_median": 1000 * statistics.median(row["edit_seconds"] for row in rows)
        if rows
        else math.nan,
        "total_ms_median": 1000 * statistics.median(row["seconds"] for row in rows)
        if rows
        else math.nan,
        # Per-task ratios cancel the load drifts of a shared machine that medians of times keep.
        "edit_time_vs_full": statistics.median(
            row["edit_seconds"] / ref["edit_seconds"] for row, ref in zip(rows, full, strict=True)
        )
        if rows
        else math.nan,
    }


def distance_bin(distance: int) -> str:
    for low, high in zip(DISTANCE_BINS, (*DISTANCE_BINS[1:], None), strict=True):
        if high is None or distance < high:
            return f"{low}+" if high is None else f"{low}-{high - 1}"
    raise AssertionError("unreachable")


def summarize(records: Sequence[dict]) -> dict:
    done = [r for r in records if r["strategies"]]
    groupings = {
        "kind": lambda r: r["kind"],
        "kind_k": lambda r: f"{r['kind']} k={r['k']}",
        "kind_place": lambda r: f"{r['kind']} {r['place']}",
        "kind_length": lambda r: f"{r['kind']} {r['length']}",
        "length": lambda r: str(r["length"]),
        "distance": lambda r: distance_bin(r["distance_from_end"]),
    }
    summary: dict = {
        "tasks": len(done),
        "skipped": len(records) - len(done),
        "id_mismatches": sum(not r["ids_match_fresh"] for r in records),
        "cache_id_mismatches": sum(
            not row["cache_ids_match"] for r in done for row in r["strategies"].values()
        ),
        "all": {s: summarize_group(done, s) for s in STRATEGIES} if done else {},
    }
    for name, key in groupings.items():
        groups: dict[str, list[dict]] = defaultdict(list)
        for record in done:
            groups[key(record)].append(record)
        summary[f"by_{name}"] = {
            label: {s: summarize_group(group, s) for s in STRATEGIES}
            for label, group in sorted(groups.items(), key=lambda item: _sort_key(item[0]))
        }
    return summary


def _sort_key(label: str) -> tuple:
    # Natural order: kinds as listed, numbers numerically.
    parts = label.replace("k=", "").replace("+", "").split()
    key = []
    for part in parts:
        head = part.split("-")[0]
        if part in KINDS:
            key.append((0, KINDS.index(part), ""))
        elif head.isdigit():
            key.append((1, int(head), ""))
        elif part in PLACES:
            key.append((2, PLACES.index(part), ""))
        else:
            key.append((3, 0, part))
    return tuple(key)


# ---- output --------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f}"


def _kind_table(by_kind: dict) -> list[str]:
    lines = [
        "| kind | strategy | n | EM | ES | agree | top-1 | KL | tokens encoded | tokens reused "
        "| FLOPs vs full | edit time vs full | edit ms | total ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, by_strategy in by_kind.items():
        for strategy, row in by_strategy.items():
            lines.append(
                f"| {kind} | {strategy} | {row['n']} | {_pct(row['exact_match'])} | "
                f"{_pct(row['edit_similarity'])} | {_pct(row['agrees_with_full'])} | "
                f"{_pct(row['top1_agrees'])} | {row['kl_mean']:.4f} | "
                f"{row['tokens_encoded']:.0f} | {row['tokens_reused']:.0f} | "
                f"{_pct(row['flops_vs_full'])}% | {_pct(row['edit_time_vs_full'])}% | "
                f"{row['edit_ms_median']:.1f} | "
                f"{row['total_ms_median']:.1f} |"
            )
    return lines


def _breakdown_table(groups: dict) -> list[str]:
    lines = [
        "| group | n | EM full | EM pie | EM conflict | agree pie | agree conflict | top-1 pie "
        "| top-1 conflict | KL pie | KL conflict | FLOPs pie vs full |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, by_strategy in groups.items():
        full, pie, conflict = by_strategy["full"], by_strategy["pie"], by_strategy["conflict"]
        lines.append(
            f"| {label} | {full['n']} | {_pct(full['exact_match'])} | "
            f"{_pct(pie['exact_match'])} | {_pct(conflict['exact_match'])} | "
            f"{_pct(pie['agrees_with_full'])} | {_pct(conflict['agrees_with_full'])} | "
            f"{_pct(pie['top1_agrees'])} | {_pct(conflict['top1_agrees'])} | "
            f"{pie['kl_mean']:.4f} | {conflict['kl_mean']:.4f} | {_pct(pie['flops_vs_full'])}% |"
        )
    return lines


BREAKDOWNS = (
    ("by_kind_k", "By edit size (k lines per edit)"),
    ("by_kind_place", "By place of the edit"),
    ("by_kind_length", "By context length (tokens)"),
    ("by_distance", "By distance of the last edit from the end of the context (tokens)"),
)


def markdown_report(results: dict) -> str:
    summary = results["summary"]
    model = results["model"]
    lines = [
        "# Edit accuracy and cost: full vs prefix vs PIE vs conflict",
        "",
        f"Model `{model['name']}` ({model['parameters'] / 1e6:.2f} M parameters); "
        f"{summary['tasks']} tasks in {results['seconds'] / 60:.1f} min"
        + (" (stopped early by --max-minutes)" if results["stopped_early"] else "")
        + f"; {len(results['unbuilt'])} planned tasks could not be built, {summary['skipped']} "
        f"changed no token. Post-edit ids differing from a fresh tokenization: "
        f"{summary['id_mismatches']}.",
        "",
        "EM / ES: exact match and edit similarity of the greedy next line against the truth (%). "
        "Agree: the same line as `full` (%). Top-1: the same next token as `full` (%). KL: mean "
        "KL(full ‖ strategy) of the next-token distribution (nats). FLOPs: the strategy's edit "
        "FLOPs over `full`'s (sums over the group). Edit ms: median time of the edit and "
        "next-token logits; total ms adds the line's generation; edit time vs full: median "
        "over tasks of the strategy's edit time over `full`'s on the same task.",
        "",
        "## By task kind",
        "",
        *_kind_table(summary.get("by_kind", {})),
    ]
    for grouping, title in BREAKDOWNS:
        lines += ["", f"## {title}", "", *_breakdown_table(summary.get(grouping, {}))]
    lines += ["", "FLOPs formula: see the docstring of `benchmarks/edit_accuracy.py`.", ""]
    return "\n".join(lines)


COLORS = {"full": "#444444", "prefix": "#8da0cb", "pie": "#1b9e77", "conflict": "#d95f02"}
# (summary key, axis label) of each panel of the accuracy plot.
ACCURACY_PANELS = (
    ("exact_match", "exact match of the next line (%)"),
    ("edit_similarity", "edit similarity of the next line (%)"),
    ("agrees_with_full", "same next line as full (%)"),
)


def plot_exact_match(plt, by_kind: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, len(ACCURACY_PANELS), figsize=(15, 4))
    kinds = list(by_kind)
    width = 0.8 / len(STRATEGIES)
    for ax, (key, ylabel) in zip(axes, ACCURACY_PANELS, strict=True):
        for i, strategy in enumerate(STRATEGIES):
            xs = [j + (i - (len(STRATEGIES) - 1) / 2) * width for j in range(len(kinds))]
            ys = [100 * by_kind[kind][strategy][key] for kind in kinds]
            ax.bar(xs, ys, width, label=strategy, color=COLORS[strategy])
        ax.set_xticks(range(len(kinds)), [f"{k}\n(n={by_kind[k]['full']['n']})" for k in kinds])
        ax.set_ylabel(ylabel)
    axes[0].set_title("Exact match by strategy and edit kind")
    axes[1].set_title("Edit similarity")
    axes[2].set_title("Agreement with full recomputation")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_cost(plt, by_length: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    lengths = [int(x) for x in by_length]
    panels = (
        ("flops", "edit FLOPs (mean, log scale)", "Estimated compute per edit"),
        ("edit_ms_median", "ms (median)", "Edit + next-token logits"),
        ("total_ms_median", "ms (median)", "Edit + generation of the line"),
    )
    for ax, (key, ylabel, title) in zip(axes, panels, strict=True):
        for strategy in STRATEGIES:
            ys = [by_length[str(n)][strategy][key] for n in lengths]
            ax.plot(lengths, ys, "o-", label=strategy, color=COLORS[strategy])
        ax.set(xlabel="context length (tokens)", ylabel=ylabel, title=title)
        ax.set_xticks(lengths, [str(n) for n in lengths])
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_distance(plt, by_distance: dict, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    labels = list(by_distance)
    counts = [by_distance[label]["full"]["n"] for label in labels]
    xs = range(len(labels))
    for strategy in ("prefix", "pie", "conflict"):
        rows = [by_distance[label][strategy] for label in labels]
        ys = [100 * r["agrees_with_full"] for r in rows]
        left.plot(xs, ys, "o-", label=strategy, color=COLORS[strategy])
    # prefix is exact (KL 0), which a log axis cannot show.
    for strategy in ("pie", "conflict"):
        ys = [max(by_distance[label][strategy]["kl_mean"], 1e-12) for label in labels]
        right.plot(xs, ys, "o-", label=strategy, color=COLORS[strategy])
    left.set_xticks(xs, [f"{lab}\n(n={c})" for lab, c in zip(labels, counts, strict=True)])
    right.set_xticks(xs, labels)
    left.set(xlabel="tokens after the last edit", ylabel="same next line as full (%)")
    right.set(xlabel="tokens after the last edit", ylabel="mean KL(full ‖ strategy), nats")
    right.set_yscale("log")
    left.set_title("Agreement with full recomputation")
    right.set_title("Next-token distribution distance")
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    plots = (
        ("by_kind", plot_exact_match, "edit_accuracy_em.png"),
        ("by_length", plot_cost, "edit_accuracy_cost.png"),
        ("by_distance", plot_distance, "edit_accuracy_distance.png"),
    )
    written = []
    for key, plot, name in plots:
        if summary.get(key):
            plot(plt, summary[key], out_dir / name)
            written.append(out_dir / name)
    return written


def write_outputs(results: dict, out_dir: Path, *, plots: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "edit_accuracy.json"
    json_path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    md_path = out_dir / "edit_accuracy.md"
    md_path.write_text(markdown_report(results))
    written = [json_path, md_path]
    if plots and importlib.util.find_spec("matplotlib") is None:
        print("matplotlib is not installed (pip install 'pie-lsp[bench]'): no plots")
    elif plots:
        written += write_plots(results, out_dir)
    return written


# ---- command line --------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _words(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


QUICK = {"lengths": (256, 512), "ks": (1, 5), "places": ("start", "end"), "n_samples": 1}


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME, help='"default" or a model folder')
    parser.add_argument(
        "--tasks", type=_words, default=KINDS, help="comma list: insertion,deletion,multi"
    )
    parser.add_argument(
        "--n-samples",
        type=int,
        default=None,
        help=f"tasks per configuration (default {DEFAULT_N_SAMPLES}; --quick: 1)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=DEFAULT_MAX_MINUTES,
        help="stop cleanly after this long and write what was measured (0: no limit)",
    )
    parser.add_argument(
        "--lengths",
        type=_ints,
        default=None,
        help="context lengths in tokens (default 512,1024,2048; --quick: 256,512)",
    )
    parser.add_argument(
        "--k", type=_ints, default=None, help="lines per edit (default 1,5,20; --quick: 1,5)"
    )
    parser.add_argument(
        "--places",
        type=_words,
        default=None,
        help="comma list (default start,middle,end; --quick: start,end)",
    )
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        help="a folder of code to draw tasks from too (repeatable)",
    )
    parser.add_argument(
        "--extensions", type=_words, default=(".py",), help="file suffixes for --source"
    )
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="default: benchmarks/results (/quick)"
    )
    parser.add_argument("--quick", action="store_true", help="a CI smoke run: a few short tasks")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 keeps timings sane when shared)"
    )
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.output_dir is None:
        # A smoke run must not overwrite the results of a full one.
        args.output_dir = RESULTS_DIR / "quick" if args.quick else RESULTS_DIR
    for folder in args.source:
        if not Path(folder).expanduser().is_dir():
            parser.error(f"--source {folder!r} is not a folder")
    unknown = set(args.tasks) - set(KINDS)
    if unknown:
        parser.error(f"unknown task kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    if args.places is not None and set(args.places) - set(PLACES):
        parser.error(f"unknown places; choose from {', '.join(PLACES)}")
    max_minutes = args.max_minutes if args.max_minutes > 0 else None
    settings = Settings(kinds=tuple(args.tasks), seed=args.seed, max_minutes=max_minutes)
    if args.quick:
        settings = Settings(**{**asdict(settings), **QUICK})
    overrides = {
        "lengths": args.lengths,
        "ks": args.k,
        "places": args.places,
        "n_samples": args.n_samples,
    }
    settings = Settings(
        **{
            **asdict(settings),
            **{k: v for k, v in overrides.items() if v is not None},
            "max_new_tokens": args.max_new_tokens,
            "sources": tuple(args.source),
            "extensions": tuple(e if e.startswith(".") else f".{e}" for e in args.extensions),
        }
    )
    return args, settings


def main(argv: Sequence[str] | None = None) -> dict:
    args, settings = parse_args(argv)
    # On an oversubscribed machine (this one trains a model on the same two cores) OpenMP
    # threads spin-wait on each other: a 2-thread forward pass ran 20x slower than 1 thread.
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    results = run(loaded, settings, progress=not args.no_progress)
    for path in write_outputs(results, args.output_dir, plots=not args.no_plots):
        print(f"wrote {path}")
    print(markdown_report(results).split("## By edit size")[0])
    return results


if __name__ == "__main__":
    main()
