"""Evaluate a model on the held-out standard-library modules and write the default model's card.

    python -m cache_engine.model.evaluation                      # evaluate and write the card
    python -m cache_engine.model.evaluation --no-card --model DIR

Reports held-out loss (nats per token), bits per byte, next-line exact match and the time of one
decode step from a 2k-token cache, plus sample completions, left-to-right and fill-in-the-middle.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import random
import statistics
import time
from pathlib import Path

import torch

from cache_engine.kv.editable_cache import EditableCache
from cache_engine.model.corpus import HELD_OUT_MODULES, collect_sources
from cache_engine.model.document_ngrams import DEFAULT_WEIGHT, DocumentNgramMixture
from cache_engine.model.loading import (
    DEFAULT_MODEL_DIR,
    LoadedModel,
    ModelLoadError,
    load_model,
    model_folder,
)
from cache_engine.model.next_line import generate_next_line, next_line_context

WINDOW = 1024
# Where the model card's section written by benchmarks/suggestion_quality.py starts.
QUALITY_MARKER = "<!-- suggestion quality -->"


@torch.inference_mode()
def bits_per_byte(loaded: LoadedModel, texts: list[str]) -> tuple[float, float]:
    """(loss in nats per token, bits per UTF-8 byte) over texts scored in WINDOW-token windows."""
    total_nats, total_tokens, total_bytes = 0.0, 0, 0
    for text in texts:
        ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        total_bytes += len(text.encode("utf-8"))
        # The first token of each file has no context to be predicted from; it is charged at
        # the uniform rate so bits per byte still covers every byte.
        total_nats += math.log(loaded.model.config.vocab_size)
        total_tokens += 1
        for start in range(0, len(ids) - 1, WINDOW):
            window = torch.tensor([ids[start : start + WINDOW + 1]])
            logits = loaded.model(input_ids=window[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0], window[0, 1:], reduction="sum")
            total_nats += loss.item()
            total_tokens += window.shape[1] - 1
    return total_nats / total_tokens, total_nats / math.log(2) / total_bytes


def complete_middle_line(loaded: LoadedModel, cache: EditableCache, max_tokens: int = 48) -> str:
    """The rest of the line at a FIM prompt's middle (FIM training cut at any character, so the
    prompt may end anywhere)."""
    pieces: list[int] = []
    stop_ids = set(loaded.eos_token_ids) | set(loaded.tokenizer.all_special_ids)

    def keep_going(token: int, log_prob: float) -> bool:
        if token in stop_ids:
            return False
        pieces.append(token)
        return "\n" not in loaded.tokenizer.decode(pieces)

    cache.generate(max_tokens, keep_going)
    return loaded.tokenizer.decode(pieces).split("\n")[0]


def next_line_exact_match(
    loaded: LoadedModel,
    texts: list[str],
    samples: int,
    context_tokens: int,
    seed: int,
    ngram_weight: float = 0.0,
    start_new_line: bool = True,
) -> tuple[float, list[dict]]:
    """Greedy next line from up to context_tokens of left context, compared stripped; with
    `ngram_weight`, greedy by the model mixed with the context's n-grams (document_ngrams.py);
    `start_new_line` as in next_line.generate_next_line."""
    rng = random.Random(seed)
    candidates = []
    for file_index, text in enumerate(texts):
        offset = 0
        for line in text.splitlines(keepends=True):
            if line.strip() and offset > 200:
                candidates.append((file_index, offset, line.rstrip("\r\n")))
            offset += len(line)
    picks = rng.sample(candidates, min(samples, len(candidates)))
    cache = EditableCache(loaded.model, strategy="full", initial_capacity=context_tokens + 64)
    hits = 0
    examples = []
    for file_index, offset, truth in picks:
        context = next_line_context(texts[file_index][:offset])
        ids = loaded.tokenizer(context, add_special_tokens=False)["input_ids"]
        cache.reset(ids[-context_tokens:])
        choose = DocumentNgramMixture(ngram_weight) if ngram_weight else None
        predicted = generate_next_line(
            cache,
            loaded.tokenizer,
            loaded.eos_token_ids,
            choose=choose,
            start_new_line=start_new_line,
        )
        hit = predicted.strip() == truth.strip()
        hits += hit
        if len(examples) < 8:
            examples.append({"truth": truth, "predicted": predicted, "hit": hit})
    return hits / len(picks), examples


def decode_step_ms(loaded: LoadedModel, texts: list[str], cache_tokens: int = 2048) -> float:
    ids = loaded.tokenizer("".join(texts), add_special_tokens=False)["input_ids"][:cache_tokens]
    cache = EditableCache(loaded.model, strategy="full", initial_capacity=cache_tokens + 128)
    cache.reset(ids)
    cache.next_token_logits()
    times: list[float] = []
    last = [time.perf_counter()]

    def clock(token: int, log_prob: float) -> bool:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        return True

    cache.generate(65, clock)
    # The first interval includes no forward pass; the rest are one decode step each.
    return statistics.median(times[1:]) * 1000


def sample_completions(loaded: LoadedModel, texts: list[str], seed: int) -> list[dict]:
    """Five completions: three left-to-right, two fill-in-the-middle, from held-out code."""
    rng = random.Random(seed)
    samples = []
    cache = EditableCache(loaded.model, strategy="full")
    for kind in ("left-to-right",) * 3 + ("fill-in-the-middle",) * 2:
        text = texts[rng.randrange(len(texts))]
        lines = text.splitlines(keepends=True)
        cut = rng.randrange(20, len(lines) - 20)
        while not lines[cut].strip():
            cut += 1
        prefix = "".join(lines[max(0, cut - 30) : cut])
        suffix = "".join(lines[cut + 1 : cut + 15])
        if kind == "fill-in-the-middle" and loaded.fim is not None:
            fim = loaded.fim
            prompt_ids = (
                loaded.tokenizer(fim.prefix, add_special_tokens=False)["input_ids"]
                + loaded.tokenizer(prefix, add_special_tokens=False)["input_ids"]
                + loaded.tokenizer(fim.suffix, add_special_tokens=False)["input_ids"]
                + loaded.tokenizer(suffix, add_special_tokens=False)["input_ids"]
                + loaded.tokenizer(fim.middle, add_special_tokens=False)["input_ids"]
            )
            cache.reset(prompt_ids)
            completion = complete_middle_line(loaded, cache)
        else:
            context = next_line_context(prefix)
            cache.reset(loaded.tokenizer(context, add_special_tokens=False)["input_ids"])
            completion = generate_next_line(cache, loaded.tokenizer, loaded.eos_token_ids)
        samples.append(
            {
                "kind": kind,
                "prefix_tail": "".join(lines[max(0, cut - 3) : cut]),
                "suffix_head": "".join(lines[cut + 1 : cut + 3]) if kind != "left-to-right" else "",
                "completion": completion,
                "truth": lines[cut].rstrip("\n"),
            }
        )
    return samples


def outside_stdlib_texts() -> list[str]:
    """Code the model never saw: tqdm's sources (MPL-2.0/MIT), installed with pie-lsp."""
    spec = importlib.util.find_spec("tqdm")
    if spec is None or spec.origin is None:
        return []
    return [p.read_text(encoding="utf-8") for p in sorted(Path(spec.origin).parent.glob("*.py"))]


def parses(text: str) -> bool:
    try:
        ast.parse(text)
    except SyntaxError:
        return False
    return True


def evaluate(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    _, held_out = collect_sources()
    texts = [f.text for f in held_out]
    started = time.perf_counter()
    loss, bpb = bits_per_byte(loaded, texts)
    outside = outside_stdlib_texts()
    _, outside_bpb = bits_per_byte(loaded, outside) if outside else (None, None)
    start_new_line = not args.free_first_token

    def exact_match(ngram_weight: float) -> tuple[float, list[dict]]:
        return next_line_exact_match(
            loaded,
            texts,
            args.em_samples,
            args.context_tokens,
            args.seed,
            ngram_weight,
            start_new_line,
        )

    em, em_examples = exact_match(0.0)
    mixed_em = exact_match(args.ngram_weight)[0] if args.ngram_weight else em
    result = {
        "model": args.model,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "held_out_modules": list(HELD_OUT_MODULES),
        "held_out_loss_nats_per_token": loss,
        "held_out_bits_per_byte": bpb,
        "outside_stdlib_bits_per_byte": outside_bpb,
        "next_line_exact_match": em,
        "next_line_exact_match_with_document_ngrams": mixed_em,
        "document_ngram_weight": args.ngram_weight,
        "next_line_samples": args.em_samples,
        "next_line_context_tokens": args.context_tokens,
        "next_line_first_token_starts_line": start_new_line,
        "next_line_examples": em_examples,
        "decode_step_ms_2k_cache": decode_step_ms(loaded, texts),
        "threads": args.threads,
        "samples": sample_completions(loaded, texts, args.seed),
        "evaluation_seconds": time.perf_counter() - started,
    }
    return result


_FIRST_STAGE_DATA = (
    "the Python standard library (PSF licence) without its test suites, plus pip's and "
    "setuptools' own code (MIT; vendored packages left out), FIM cut at random characters"
)


def _stage(training: dict) -> str:
    return (
        f"{training.get('steps', '?')} steps of {training.get('batch_size', '?')}×"
        f"{training.get('seq_len', '?')} tokens ({training.get('tokens_seen', 0) / 1e6:.1f} M "
        f"tokens), AdamW, peak lr {training.get('peak_lr', '?')}, seed {training.get('seed', '?')}"
    )


def _stages(training: dict) -> str:
    """This run, then each run it continued from, with the data of those that say it."""
    parts = [_stage(training)]
    averaged = training.get("averaged_snapshot_steps")
    if averaged:
        steps = ", ".join(str(step) for step in averaged)
        parts[0] += f", exported as the mean of its weights at steps {steps}"
    stage = training.get("previous_stage")
    while stage:
        data = stage.get("data")
        parts.append(
            f"continued from {_stage(stage)}"
            + (" on the same data" if data == training.get("data") else "")
            + ("" if data else f" on {_FIRST_STAGE_DATA}")
        )
        stage = stage.get("previous_stage")
    return "; ".join(parts)


def write_card(result: dict, folder: Path) -> None:
    log_path = folder / "training_log.json"
    training = json.loads(log_path.read_text()) if log_path.exists() else {}
    samples = "\n\n".join(
        f"**{s['kind']}** — context ends with:\n\n```python\n{s['prefix_tail']}```\n"
        + (f"suffix starts with:\n\n```python\n{s['suffix_head']}```\n" if s["suffix_head"] else "")
        + f"model: `{s['completion']}`  \ntruth: `{s['truth']}`"
        for s in result["samples"]
    )
    card = f"""# pie-lsp default model

A small Llama-architecture code model (RoPE, grouped-query attention), trained on this machine so
that pie-lsp works offline on first run. It is a demonstration model: it completes common Python
idioms, not whole programs. Use a real code model (`--model /path/to/deepseek-coder-1.3b-base`)
for useful completions.

| | |
|---|---|
| architecture | Llama: 6 layers, width 256, 4 query heads over 2 key/value heads, head_dim 64, RoPE θ=10000 |
| parameters | {result["parameters"] / 1e6:.2f} M |
| tokenizer | byte-level BPE, 4,096 tokens, with `<\\|endoftext\\|>`, `<\\|fim_prefix\\|>`, `<\\|fim_suffix\\|>`, `<\\|fim_middle\\|>` |
| data | {training.get("data") or _FIRST_STAGE_DATA} |
| FIM layouts | {", ".join(training.get("fim_layouts") or ["psm"])} |
| held out | {", ".join(result["held_out_modules"])} |
| training | {_stages(training)} |

## Evaluation (`python -m cache_engine.model.evaluation`)

| metric | value |
|---|---|
| held-out loss | {result["held_out_loss_nats_per_token"]:.3f} nats/token |
| held-out bits per byte | {result["held_out_bits_per_byte"]:.3f} |
| bits per byte on code outside the stdlib (tqdm) | {result["outside_stdlib_bits_per_byte"] or float("nan"):.3f} |
| next-line exact match ({result["next_line_samples"]} held-out lines, {result["next_line_context_tokens"]}-token left context, greedy{", the first token starting the line" if result.get("next_line_first_token_starts_line") else ""}) | {result["next_line_exact_match"] * 100:.1f}% |
| the same, greedy by the model mixed with the context's n-grams at weight {result["document_ngram_weight"]:g} (`documentNgramWeight`, the server's default) | {result["next_line_exact_match_with_document_ngrams"] * 100:.1f}% |
| one decode step from a 2k-token cache ({result["threads"]} threads, fp32) | {result["decode_step_ms_2k_cache"]:.2f} ms |

## Sample completions (greedy, one line)

{samples}
"""
    path = folder / "MODEL_CARD.md"
    # The suggestion-quality section comes from benchmarks/suggestion_quality.py: keep it.
    previous = path.read_text() if path.exists() else ""
    kept = previous[previous.find(QUALITY_MARKER) :] if QUALITY_MARKER in previous else ""
    path.write_text(card + ("\n" + kept if kept else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    # 200 lines moved exact match by about ±1.6 points from sampling alone; 600, by about ±1.
    parser.add_argument("--em-samples", type=int, default=600)
    # As much left context as the server gives the model (CompletionSettings.max_prompt_tokens).
    parser.add_argument("--context-tokens", type=int, default=1536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ngram-weight",
        type=float,
        default=DEFAULT_WEIGHT,
        help="the second exact match mixes the context's n-grams into the model's choice, this much per matching length (the server's documentNgramWeight)",
    )
    parser.add_argument(
        "--free-first-token",
        action="store_true",
        help="let the model go on with the context's last line instead of starting the next one (how exact match was measured before; such a line predicts nothing)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-card", action="store_true")
    parser.add_argument(
        "--output",
        type=Path,
        help="where the JSON goes (default: evaluation.json in the evaluated model's folder)",
    )
    args = parser.parse_args(argv)
    try:
        folder = model_folder(args.model)
    except ModelLoadError as error:
        parser.error(str(error))
    if args.output is None:
        args.output = folder / "evaluation.json"
    result = evaluate(args)
    printable = {k: v for k, v in result.items() if k not in ("samples", "next_line_examples")}
    print(json.dumps(printable, indent=1))
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    if not args.no_card and args.model == "default":
        write_card(result, DEFAULT_MODEL_DIR)
        print(f"wrote {DEFAULT_MODEL_DIR / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
