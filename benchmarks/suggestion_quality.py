"""Are the suggestions worth showing? Ghost text at the places people ask for it, in unseen code.

    python -m benchmarks.suggestion_quality                  # default model, 432 places
    python -m benchmarks.suggestion_quality --places 144     # a quicker, noisier run
    python -m benchmarks.suggestion_quality --model DIR --output results.json

Places come from packages kept out of the training corpus (`EVALUATION_PACKAGES`: requests,
click, attrs, rich, typer), a third of each kind:
- line start: after the indentation of a line of code (not inside a string or a comment);
- after `name.`: where an attribute follows;
- mid-line after `(`: where arguments follow.
Generated files and tables of numbers (rich's unicode data) are left out.
At each place the rest of the line is deleted, as if the user were writing it, and the engine
completes at the cursor (`CompletionEngine.complete`, the server's own path, FIM layout as the
model declares). The true rest of the line is the reference:
- right start: the suggestion's first 8 characters are the truth's (or both lines are shorter
  and equal);
- exact first line: the suggestion's first line is the truth;
- junk start: not a right start, and it starts with a lone letter glued to punctuation ("e."),
  with a word that names nothing in the file or the language, or with a comment stutter ("#  #").

Each configuration (token healing on or off, a token-probability cut) runs once with the gate
open; the confidence gate (`minConfidence`) is then swept over the recorded confidences, which
is what the gate compares. Results go to benchmarks/results/suggestion_quality.json and a
precision-against-shown plot beside it.
"""

from __future__ import annotations

import argparse
import builtins
import importlib.util
import io
import json
import keyword
import math
import random
import re
import sys
import time
import tokenize
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from benchmarks.machine import machine_record
from cache_engine.completion.engine import CompletionEngine
from cache_engine.completion.settings import CompletionSettings
from cache_engine.model.corpus import EVALUATION_PACKAGES, is_generated
from cache_engine.model.evaluation import QUALITY_MARKER
from cache_engine.model.loading import load_model, model_folder

RESULTS = Path(__file__).parent / "results"
PlaceKind = Literal["line start", "after name.", "after ("]
PLACE_KINDS: tuple[PlaceKind, ...] = ("line start", "after name.", "after (")
# tqdm is the bits-per-byte text outside the corpus; the rest is for places.
PLACE_PACKAGES = tuple(p for p in EVALUATION_PACKAGES if p != "tqdm")
GATES = tuple(round(0.05 * i, 2) for i in range(20))
CUTS = (0.0, 0.02, 0.05, 0.1)
RIGHT_CHARS = 8
TABLE_DIGIT_SHARE = 0.15
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LONE_LETTER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)[^\w\s]")
_COMMENT_STUTTER = re.compile(r"\s*#[\s#]*(#|$)")
_LANGUAGE_NAMES = (
    set(keyword.kwlist)
    | set(keyword.softkwlist)
    | set(dir(builtins))
    | set(sys.stdlib_module_names)
    | {"self", "cls"}
)


@dataclass(frozen=True)
class Place:
    kind: PlaceKind
    path: str  # relative to site-packages
    cursor: int  # in the original text
    truth: str  # the rest of the line after the cursor


@dataclass(frozen=True)
class Outcome:
    suggestion: str
    confidence: float | None
    right_start: bool
    exact_line: bool
    junk_start: bool
    seconds: float


def package_files() -> list[tuple[str, str]]:
    """(path relative to site-packages, text) of each package's sources, tests left out."""
    files: list[tuple[str, str]] = []
    for package in PLACE_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise SystemExit(f"package {package!r} is not installed: pip install -e '.[held-out]'")
        root = Path(spec.origin).parent
        for path in sorted(root.rglob("*.py")):
            if "test" in path.relative_to(root).parts[0:-1] or path.name.startswith("test"):
                continue
            text = path.read_text(encoding="utf-8")
            # Generated files and tables of numbers are not code anyone types.
            tables = sum(c.isdigit() for c in text) > TABLE_DIGIT_SHARE * len(text)
            if 2_000 <= len(text) <= 200_000 and not is_generated(text) and not tables:
                files.append((str(path.relative_to(root.parent)), text))
    return files


def code_lines(text: str) -> set[int]:
    """0-based numbers of lines whose first token is code: not a string, comment or blank."""
    starts: set[int] = set()
    seen: set[int] = set()
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            row = token.start[0] - 1
            if row in seen or token.type in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT):
                continue
            if token.type == tokenize.DEDENT:
                continue
            seen.add(row)
            if token.type in (tokenize.NAME, tokenize.OP, tokenize.NUMBER):
                starts.add(row)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return set()
    return starts


def candidate_places(path: str, text: str, kind: PlaceKind) -> Iterator[Place]:
    offset = 0
    rows = code_lines(text)
    for row, line in enumerate(text.splitlines(keepends=True)):
        body = line.rstrip("\r\n").rstrip()
        if row in rows and len(body.strip()) >= 4:
            indent = len(body) - len(body.lstrip())
            if kind == "line start":
                yield Place(kind, path, offset + indent, body[indent:])
            else:
                marker = "." if kind == "after name." else "("
                for column in range(indent, len(body) - 1):
                    after = body[column + 1]
                    if body[column] != marker or not (after.isalnum() or after in "_'\"["):
                        continue
                    if marker == "." and not (column > 0 and body[column - 1].isalnum()):
                        continue
                    yield Place(kind, path, offset + column + 1, body[column + 1 :])
        offset += len(line)


def sample_places(count: int, seed: int) -> tuple[list[Place], dict[str, str]]:
    files = package_files()
    texts = dict(files)
    rng = random.Random(seed)
    places: list[Place] = []
    for index in range(count):
        kind = PLACE_KINDS[index % len(PLACE_KINDS)]
        while True:
            path, text = files[rng.randrange(len(files))]
            candidates = list(candidate_places(path, text, kind))
            if candidates:
                places.append(candidates[rng.randrange(len(candidates))])
                break
    return places, texts


def right_start(suggestion: str, truth: str) -> bool:
    first = suggestion.split("\n", 1)[0]
    if len(truth) < RIGHT_CHARS or len(first) < RIGHT_CHARS:
        return first == truth
    return first[:RIGHT_CHARS] == truth[:RIGHT_CHARS]


def junk_start(suggestion: str, truth: str, text: str, cursor: int) -> bool:
    """Junk as the issue saw it, for a suggestion that does not start right."""
    if right_start(suggestion, truth) or not suggestion.strip():
        return False
    if _COMMENT_STUTTER.match(suggestion):
        return True
    # A suggestion that starts inside a word is judged by the whole word. \Z, not $: $ also
    # matches before a final newline, which glued the last word of the line above onto
    # suggestions at unindented line starts.
    partial = re.search(r"[A-Za-z0-9_]*\Z", text[:cursor]).group(0)  # type: ignore[union-attr]
    head = partial + suggestion if suggestion[:1].isalnum() or suggestion[:1] == "_" else suggestion
    head = head.lstrip()
    known = set(_IDENTIFIER.findall(text)) | _LANGUAGE_NAMES
    lone = _LONE_LETTER.match(head)
    if lone is not None and len(lone.group(1)) == 1 and lone.group(1) not in known:
        return True
    word = _IDENTIFIER.match(head)
    return word is not None and word.group(0) not in known


def run_configuration(
    engine: CompletionEngine, places: list[Place], texts: dict[str, str]
) -> list[Outcome]:
    outcomes = []
    for index, place in enumerate(places):
        text = texts[place.path]
        line_end = text.find("\n", place.cursor)
        line_end = len(text) if line_end < 0 else line_end
        document = text[: place.cursor] + text[line_end:]
        uri = f"file:///place-{index}.py"
        engine.open_document(uri, document, 1, "python")
        try:
            completion = engine.complete(uri, place.cursor)
        finally:
            engine.close_document(uri)
            engine.release_closed()
        suggestion = completion.text
        outcomes.append(
            Outcome(
                suggestion,
                completion.confidence,
                right_start(suggestion, place.truth) if suggestion else False,
                bool(suggestion) and suggestion.split("\n", 1)[0] == place.truth,
                junk_start(suggestion, place.truth, text, place.cursor),
                completion.seconds,
            )
        )
    return outcomes


def shown_at(outcomes: list[Outcome], gate: float) -> list[Outcome]:
    """The suggestions minConfidence `gate` lets through."""
    return [o for o in outcomes if o.suggestion and (o.confidence or 0) >= gate]


def gate_curve(outcomes: list[Outcome]) -> list[dict[str, float]]:
    """Shown rate and the quality of what is shown, for each minConfidence."""
    curve = []
    for gate in GATES:
        shown = shown_at(outcomes, gate)
        count = len(shown)
        curve.append(
            {
                "min_confidence": gate,
                "shown_rate": count / len(outcomes),
                "right_start_of_shown": sum(o.right_start for o in shown) / count if count else 0,
                "exact_line_of_shown": sum(o.exact_line for o in shown) / count if count else 0,
                "junk_start_of_shown": sum(o.junk_start for o in shown) / count if count else 0,
                "exact_line_of_places": sum(o.exact_line for o in shown) / len(outcomes),
            }
        )
    return curve


def by_kind(places: list[Place], outcomes: list[Outcome], gate: float) -> dict[str, dict]:
    result = {}
    for kind in PLACE_KINDS:
        chosen = [o for p, o in zip(places, outcomes, strict=True) if p.kind == kind]
        result[kind] = gate_curve_at(chosen, gate)
    return result


def gate_curve_at(outcomes: list[Outcome], gate: float) -> dict[str, float]:
    shown = shown_at(outcomes, gate)
    count = len(shown) or 1
    return {
        "places": len(outcomes),
        "shown_rate": len(shown) / max(len(outcomes), 1),
        "right_start_of_shown": sum(o.right_start for o in shown) / count,
        "junk_start_of_shown": sum(o.junk_start for o in shown) / count,
    }


# One-sided 95 % normal bound: a share of about 150 shown suggestions is known to about ±4
# points, and the gate with the most shown that met the targets on one seed's places, right at
# the junk line, missed them on another seed's (mean of steps 3,250 and 3,500: 4.96 % junk at
# --seed 11, 6.1 % at --seed 5).
TARGET_MARGIN_Z = 1.645


def meets_targets(point: dict[str, float], places: int, z: float = TARGET_MARGIN_Z) -> bool:
    """The issue's targets (right starts >= 25 % and junk <= 5 % of shown, shown >= 30 %), each
    share held at z standard errors on its wrong side."""
    shown = round(point["shown_rate"] * places)
    if not shown or point["shown_rate"] < 0.30:
        return False
    right, junk = point["right_start_of_shown"], point["junk_start_of_shown"]
    # A share of zero would claim no error at all; one in `shown` stands in for it.
    junk_floor = max(junk, 1 / shown)
    right_low = right - z * math.sqrt(right * (1 - right) / shown)
    junk_high = junk + z * math.sqrt(junk_floor * (1 - junk_floor) / shown)
    return right_low >= 0.25 and junk_high <= 0.05


def choose_default(configurations: list[dict], places: int) -> dict:
    """With token healing on: the cut and gate that meet the issue's targets, with a margin
    for sampling (`meets_targets`), with the most shown; else, among those that show at least
    30 % of the time, the one with the most right starts net of junk starts (what a shown
    suggestion is worth to the user, roughly)."""
    points = [
        (c, point)
        for c in configurations
        if c["heal_tokens"]
        for point in c["gate_curve"]
        if point["shown_rate"]
    ]
    meeting = [(c, p) for c, p in points if meets_targets(p, places)]
    if meeting:
        configuration, point = max(meeting, key=lambda item: item[1]["shown_rate"])
    else:
        frequent = [(c, p) for c, p in points if p["shown_rate"] >= 0.30] or points
        configuration, point = max(
            frequent,
            key=lambda item: item[1]["right_start_of_shown"] - item[1]["junk_start_of_shown"],
        )
    return {
        "configuration": configuration["name"],
        "meets_targets": bool(meeting),
        "min_token_prob": configuration["min_token_prob"],
        **point,
    }


def calibrate(model: str, chosen: dict) -> None:
    """Record the chosen gate in the model's config.json (`completion_gate`), which the
    engine uses while minConfidence and minTokenProb are -1."""
    folder = model_folder(model)
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["completion_gate"] = {
        "min_confidence": chosen["min_confidence"],
        "min_token_prob": chosen["min_token_prob"],
        "source": "python -m benchmarks.suggestion_quality --calibrate",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")


def card_section(result: dict) -> str:
    """The model card's section on suggestion quality, from this run."""
    shipped = result["shipped_defaults"]
    rows = "\n".join(
        f"| {kind} | {point['places']} | {point['shown_rate']:.1%} | "
        f"{point['right_start_of_shown']:.1%} | {point['junk_start_of_shown']:.1%} |"
        for kind, point in shipped["by_kind"].items()
    )
    ungated = next(c for c in result["configurations"] if not c["heal_tokens"])["gate_curve"][0]
    return f"""{QUALITY_MARKER}
## Suggestion quality (`python -m benchmarks.suggestion_quality --calibrate`)

{len(result["places"])} cursor places in code outside the training corpus (requests, click, attrs,
rich, typer), the rest of the line deleted, completed through `CompletionEngine` with token
healing, the document's n-grams mixed in at {shipped["document_ngram_weight"]:g} per matching length
(`documentNgramWeight`; 0: the model alone), minTokenProb {shipped["min_token_prob"]:g} and
minConfidence {shipped["min_confidence"]:g}
(calibrated from the curve in `benchmarks/results/suggestion_quality.png` and recorded as
`completion_gate` in `config.json`):

| places | n | shown | right first 8 chars, of shown | junk starts, of shown |
|---|---:|---:|---:|---:|
{rows}
| all | {shipped["places"]} | {shipped["shown_rate"]:.1%} | {shipped["right_start_of_shown"]:.1%} | {shipped["junk_start_of_shown"]:.1%} |

Without healing or gate: shown {ungated["shown_rate"]:.1%}, right starts
{ungated["right_start_of_shown"]:.1%}, junk starts {ungated["junk_start_of_shown"]:.1%}.
"""


def write_card_section(model: str, result: dict) -> None:
    folder = model_folder(model)
    path = folder / "MODEL_CARD.md"
    card = path.read_text() if path.exists() else ""
    if QUALITY_MARKER in card:
        card = card[: card.index(QUALITY_MARKER)].rstrip() + "\n"
    path.write_text(card + "\n" + card_section(result))


def plot(configurations: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (right_axis, junk_axis) = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    # The targets: right starts >= 25 % and junk <= 5 % of shown, shown >= 30 %.
    for axis, metric, target, label in (
        (right_axis, "right_start_of_shown", 0.25, "right starts among shown (first 8 chars)"),
        (junk_axis, "junk_start_of_shown", 0.05, "junk starts among shown"),
    ):
        for configuration in configurations:
            curve = [p for p in configuration["gate_curve"] if p["shown_rate"] > 0]
            axis.plot(
                [p["shown_rate"] for p in curve],
                [p[metric] for p in curve],
                marker="o",
                markersize=3,
                label=configuration["name"],
            )
        axis.axhline(target, color="grey", linestyle=":", linewidth=1)
        axis.axvline(0.30, color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel("shown rate (share of places with ghost text)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    right_axis.legend(fontsize=8)
    figure.suptitle("Suggestion quality against how often it is shown (minConfidence swept)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    # Of about 130 suggestions shown at 432 places, a share is known to about ±4 points; at the
    # 144 places of earlier runs, ±7, which ranked two checkpoints of one run the wrong way.
    parser.add_argument("--places", type=int, default=432)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / "suggestion_quality.json")
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="write the gate chosen from the curve into the model folder's config.json, and this run's numbers into its MODEL_CARD.md",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    places, texts = sample_places(args.places, args.seed)
    configurations = []
    for heal in (False, True):
        for cut in CUTS if heal else (0.0,):
            name = f"{'healing' if heal else 'no healing'}, minTokenProb {cut:g}"
            settings = CompletionSettings(heal_tokens=heal, min_token_prob=cut, min_confidence=0)
            engine = CompletionEngine(loaded, settings)
            started = time.perf_counter()
            outcomes = run_configuration(engine, places, texts)
            print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
            configurations.append(
                {
                    "name": name,
                    "heal_tokens": heal,
                    "min_token_prob": cut,
                    "gate_curve": gate_curve(outcomes),
                    "outcomes": [asdict(o) for o in outcomes],
                }
            )
    chosen = choose_default(configurations, len(places))
    if args.calibrate:
        calibrate(args.model, chosen)
        loaded = load_model(args.model)
    defaults = CompletionSettings()
    gate = CompletionEngine(loaded, defaults).confidence_gate()
    shipped = next(
        (
            c
            for c in configurations
            if c["heal_tokens"] == defaults.heal_tokens
            and c["min_token_prob"] == gate.min_token_prob
        ),
        None,
    )
    if shipped is None:
        raise SystemExit(f"no configuration ran with minTokenProb {gate.min_token_prob}")
    shipped_outcomes = [Outcome(**o) for o in shipped["outcomes"]]
    shipped_point = gate_curve_at(shipped_outcomes, gate.min_confidence)
    rng = random.Random(args.seed + 1)
    samples = [
        {
            "kind": places[i].kind,
            "file": places[i].path,
            "line_before_cursor": texts[places[i].path][: places[i].cursor].rsplit("\n", 1)[-1],
            "truth": places[i].truth,
            "suggestion": shipped_outcomes[i].suggestion,
            "confidence": shipped_outcomes[i].confidence,
            "shown": bool(shipped_outcomes[i].suggestion)
            and (shipped_outcomes[i].confidence or 0) >= gate.min_confidence,
        }
        for i in sorted(rng.sample(range(len(places)), min(10, len(places))))
    ]
    result = {
        "model": args.model,
        "machine": machine_record(args.threads),
        "places": [asdict(p) for p in places],
        "configurations": configurations,
        "chosen_from_curve": chosen,
        "shipped_defaults": {
            "heal_tokens": defaults.heal_tokens,
            "document_ngram_weight": defaults.document_ngram_weight,
            "min_token_prob": gate.min_token_prob,
            "min_confidence": gate.min_confidence,
            **shipped_point,
            "by_kind": by_kind(places, shipped_outcomes, gate.min_confidence),
        },
        "random_samples_shipped_defaults": samples,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    plot(configurations, args.output.with_suffix(".png"))
    if args.calibrate:
        write_card_section(args.model, result)
    print(
        json.dumps({"chosen_from_curve": chosen, "shipped": result["shipped_defaults"]}, indent=1)
    )


if __name__ == "__main__":
    main()
