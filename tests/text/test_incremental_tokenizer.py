"""Text edits to token edits: exact against a fresh tokenization, local, and strict on bad input.

Three tokenizers keep the module honest (`tests/text/tokenizers.py`): the shipped default, a
Qwen2.5-style byte-level one and a SentencePiece-style one.
"""

from __future__ import annotations

import random
import statistics
import sysconfig
import time
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import normalizers

from cache_engine.kv.token_edits import TokenEdit, apply_to_ids, validate_edits
from cache_engine.text.incremental_tokenizer import IncrementalTokenizer, TokenizerRoundTripError
from tests.text.tokenizers import SPECIAL, incremental_tokenizer, qwen_style, tokenizer_named

STDLIB = Path(sysconfig.get_paths()["stdlib"])
DEFAULT_TOKENIZER = Path(__file__).parents[2] / "cache_engine" / "default_model" / "tokenizer.json"
# Held out from the default model's training corpus (cache_engine/training_corpus.py).
HELD_OUT = ("textwrap.py", "csv.py")
# Pieces that stress token boundaries: indentation, line ends, split characters, special-token
# strings, contractions, digits. U+2581 is left out: SentencePiece-style tokenizers cannot keep
# it apart from a space (tested separately).
PIECES = (
    "x",
    " ",
    "  ",
    "    ",
    "\n",
    "\n\n",
    "\r\n",
    "\r",
    "\t",
    "\t\t",
    "\x00",
    "\u00a0",
    "\u00e9",
    "\u4e2d",
    "\U0001f600",
    "\U0001f9d1\u200d\U0001f4bb",
    "<|endoftext|>",
    "<|fim_middle|>",
    "<|",
    "|>",
    "'s",
    "123",
    "#",
    '"""',
    "):",
    "def f(a):\n    return a\n",
    "  \n\n    ",
    "\r\n\t",
)


@cache
def _source(name: str) -> str:
    return (STDLIB / name).read_text()


@pytest.fixture(scope="module")
def incremental(default_tokenizer) -> IncrementalTokenizer:
    return IncrementalTokenizer(default_tokenizer)


def _check_plan(it: IncrementalTokenizer, old_ids: list[int], plan, expected_text: str) -> None:
    assert plan.new_text == expected_text
    assert plan.edits == validate_edits(plan.edits, len(old_ids))
    assert plan.new_ids == apply_to_ids(old_ids, plan.edits)
    assert it.decode(plan.new_ids) == expected_text
    if not it.verify(expected_text, plan.new_ids):
        got, want = plan.new_ids, it.encode(expected_text)
        index = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(got))
        pytest.fail(
            f"ids differ from a fresh tokenization at token {index}: "
            f"got {got[index : index + 8]}, want {want[index : index + 8]}"
        )


# -- property test over edit streams ---------------------------------------------------------


@st.composite
def _document(draw: st.DrawFn) -> str:
    lines = _source(draw(st.sampled_from(HELD_OUT))).splitlines(keepends=True)
    start = draw(st.integers(0, len(lines) - 1))
    text = "".join(lines[start : start + draw(st.integers(0, 80))])
    style = draw(st.sampled_from(("plain", "crlf", "cr", "tabs")))
    if style == "crlf":
        text = text.replace("\n", "\r\n")
    elif style == "cr":
        text = text.replace("\n", "\r")
    elif style == "tabs":
        text = text.replace("    ", "\t")
    return text


_inserted = st.one_of(
    st.sampled_from(PIECES),
    st.lists(st.sampled_from(PIECES), min_size=2, max_size=4).map("".join),
    st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\u2581"),
        max_size=6,
    ),
)


def _position(data: st.DataObject, text: str) -> int:
    position = data.draw(st.integers(0, len(text)))
    # Line starts and ends are where indentation and newline tokens merge.
    snap = data.draw(st.sampled_from(("none", "none", "line start", "line end")))
    if snap == "line start":
        return text.rfind("\n", 0, position) + 1
    if snap == "line end":
        end = text.find("\n", position)
        return len(text) if end < 0 else end
    return position


def _random_change(data: st.DataObject, text: str) -> tuple[int, int, str]:
    start = _position(data, text)
    end = min(len(text), start + data.draw(st.sampled_from((0, 0, 1, 2, 5, 40))))
    return start, end, data.draw(_inserted)


@pytest.mark.parametrize("name", ["default", "qwen_style", "sentencepiece_style"])
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(document=_document(), data=st.data())
def test_edit_streams_match_fresh_tokenization(name: str, document: str, data: st.DataObject):
    it = incremental_tokenizer(name)
    special = {tokenizer_named(name).token_to_id(s) for s in SPECIAL}
    text, ids = document, it.encode(document)
    offsets = None
    for _ in range(data.draw(st.integers(1, 12), label="steps")):
        kind = data.draw(st.sampled_from(("range", "range", "text", "several")), label="kind")
        if kind == "several":
            # Apply from the back so that earlier positions stay valid.
            new_text = text
            positions = sorted(
                data.draw(st.lists(st.integers(0, len(text)), min_size=2, max_size=3)),
                reverse=True,
            )
            for position in positions:
                removed = data.draw(st.sampled_from((0, 0, 1, 5)))
                inserted = data.draw(_inserted)
                new_text = new_text[:position] + inserted + new_text[position + removed :]
            plan = it.edits_for_text(text, ids, new_text, offsets=offsets)
        else:
            start, end, inserted = _random_change(data, text)
            new_text = text[:start] + inserted + text[end:]
            if kind == "range":
                plan = it.edits_for_range(text, ids, start, end, inserted, offsets=offsets)
            else:
                plan = it.edits_for_text(text, ids, new_text, offsets=offsets)
        _check_plan(it, ids, plan, new_text)
        assert not special & set(plan.new_ids)
        keep_offsets = data.draw(st.booleans(), label="reuse offsets")
        if keep_offsets:
            assert plan.new_offsets == it.offsets(plan.new_text, plan.new_ids)
        offsets = plan.new_offsets if keep_offsets else None
        text, ids = plan.new_text, plan.new_ids
    assert it.stats.mismatches == 0


def test_long_edit_stream_on_a_whole_file():
    """Many keystroke-sized edits on a whole held-out module, reusing offsets between them."""
    it = incremental_tokenizer("default")
    rng = random.Random(20240601)
    text = _source("textwrap.py")
    ids = it.encode(text)
    offsets = it.offsets(text, ids)
    before = it.stats.mismatches
    for _ in range(150):
        start = rng.randrange(len(text) + 1)
        end = min(len(text), start + rng.choice((0, 0, 1, 3, 30)))
        inserted = rng.choice(PIECES)
        plan = it.edits_for_range(text, ids, start, end, inserted, offsets=offsets)
        new_text = text[:start] + inserted + text[end:]
        assert plan.new_text == new_text
        assert it.verify(new_text, plan.new_ids)
        text, ids, offsets = new_text, plan.new_ids, plan.new_offsets
    assert it.decode(ids) == text
    assert it.stats.mismatches == before


# -- locality ----------------------------------------------------------------------------------


def test_changing_one_token_replaces_one_token(incremental):
    text = _source("textwrap.py")
    ids = incremental.encode(text)
    assert len(incremental.encode(" True")) == len(incremental.encode(" None")) == 1
    start = text.index(" True") + 1
    plan = incremental.edits_for_range(text, ids, start, start + 4, "None")
    (edit,) = plan.edits
    assert edit.end - edit.start == 1
    assert edit.new_ids == tuple(incremental.encode(" None"))
    assert plan.new_ids == incremental.encode(plan.new_text)


def test_changing_one_byte_of_a_split_character_replaces_one_token(incremental):
    # Byte-level BPE spells this emoji as four byte tokens; its neighbour differs in the last.
    text = "def f():\n    return '\U0001f600'\n"
    ids = incremental.encode(text)
    start = text.index("\U0001f600")
    plan = incremental.edits_for_range(text, ids, start, start + 1, "\U0001f601")
    (edit,) = plan.edits
    assert edit.end - edit.start == 1 and len(edit.new_ids) == 1
    assert plan.new_ids == incremental.encode(plan.new_text)


def _thousand_lines() -> str:
    lines = _source("difflib.py").splitlines(keepends=True)
    assert len(lines) >= 1000
    return "".join(lines[:1000])


@pytest.mark.parametrize(
    ("description", "change"),
    [
        ("insert a line", lambda text, at: (at, at, "        total = compute(value) + 1\n")),
        ("type in a word", lambda text, at: (at + 8, at + 8, "q")),
        ("delete a line", lambda text, at: (at, text.index("\n", at) + 1, "")),
        ("indent a line", lambda text, at: (at, at, "    ")),
        ("join two lines", lambda text, at: (at - 1, at, "")),
    ],
)
def test_a_change_mid_file_touches_few_tokens(incremental, description, change):
    text = _thousand_lines()
    ids = incremental.encode(text)
    at = sum(len(line) for line in text.splitlines(keepends=True)[:500])
    start, end, inserted = change(text, at)
    plan = incremental.edits_for_range(text, ids, start, end, inserted)
    assert plan.new_ids == incremental.encode(plan.new_text), description
    assert len(plan.edits) == 1, description
    touched = sum(e.end - e.start for e in plan.edits)
    assert touched < 30, (description, plan.edits)
    assert plan.window_chars < 2000, description
    # The edit sits where the change is, not at either end of the file.
    at_token = len(incremental.encode(text[:at]))
    assert abs(plan.edits[0].start - at_token) < 30, description


def test_far_apart_changes_give_separate_edits(incremental):
    text = _thousand_lines()
    ids = incremental.encode(text)
    lines = text.splitlines(keepends=True)
    lines[100] = lines[100].rstrip("\n") + "  # first\n"
    lines[800] = "    added = 1\n" + lines[800]
    new_text = "".join(lines)
    plan = incremental.edits_for_text(text, ids, new_text)
    assert plan.new_ids == incremental.encode(new_text)
    assert len(plan.edits) == 2
    assert all(e.end - e.start < 30 for e in plan.edits)
    assert plan.window_chars < 3000


def test_nearby_changes_share_a_window(incremental):
    text = _thousand_lines()
    ids = incremental.encode(text)
    lines = text.splitlines(keepends=True)
    lines[300] = "x" + lines[300]
    lines[302] = "y" + lines[302]
    new_text = "".join(lines)
    plan = incremental.edits_for_text(text, ids, new_text)
    assert plan.new_ids == incremental.encode(new_text)
    assert sum(e.end - e.start for e in plan.edits) < 40


def test_resent_whole_text_is_trimmed_to_the_change(incremental):
    text = _thousand_lines()
    ids = incremental.encode(text)
    at = text.index("\n", len(text) // 2)
    new_text = text[:at] + " # note" + text[at:]
    plan = incremental.edits_for_range(text, ids, 0, len(text), new_text)
    assert plan.new_ids == incremental.encode(new_text)
    assert plan.window_chars < 2000


# -- edge cases --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [("", ""), ("", "def f():\n    pass\n"), ("def f():\n    pass\n", ""), ("x", "x"), ("", " ")],
)
def test_empty_texts(incremental, old, new):
    ids = incremental.encode(old)
    for plan in (
        incremental.edits_for_text(old, ids, new),
        incremental.edits_for_range(old, ids, 0, len(old), new),
    ):
        assert plan.new_ids == incremental.encode(new)
        assert incremental.decode(plan.new_ids) == new
        if old == new:
            assert plan.edits == []
    if not old and new:
        assert plan.edits == [TokenEdit.insert(0, incremental.encode(new))]
    if old and not new:
        assert plan.edits == [TokenEdit.delete(0, len(ids))]


@pytest.mark.parametrize(
    ("start", "end", "named"),
    [
        (-1, 0, "start=-1"),
        (0, 6, "end=6"),
        (3, 2, "start=3"),
        (True, 2, "start=True"),
        (0, 1.0, "end=1.0"),
    ],
)
def test_bad_ranges_are_rejected_without_side_effects(incremental, start, end, named):
    text = "a = 1"
    ids = incremental.encode(text)
    before = (list(ids), dict(vars(incremental.stats)))
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        incremental.edits_for_range(text, ids, start, end, "x")
    assert (ids, dict(vars(incremental.stats))) == before


def test_special_token_strings_stay_text(incremental, default_tokenizer):
    text = 'END = "<|endoftext|>"\nFIM = "<|fim_middle|>"\n'
    ids = incremental.encode(text)
    special = set(default_tokenizer.all_special_ids)
    assert special and not special & set(ids)
    assert incremental.decode(ids) == text
    # Typing the last character of a special-token string must not summon the special token.
    broken = text.replace("<|endoftext|>", "<|endoftext|")
    at = text.index("|>") + 1
    plan = incremental.edits_for_range(broken, incremental.encode(broken), at, at, ">")
    assert plan.new_text == text
    assert not special & set(plan.new_ids)
    assert plan.new_ids == ids
    # The caller's tokenizer is left as it was: special tokens still parse there.
    assert default_tokenizer.backend_tokenizer.encode_special_tokens is False
    assert default_tokenizer("<|endoftext|>", add_special_tokens=False).input_ids == [
        default_tokenizer.eos_token_id
    ]
    with pytest.raises(ValueError, match="special tokens"):
        incremental.edits_for_range("x", [default_tokenizer.eos_token_id], 0, 0, "y")


def test_ids_that_do_not_decode_to_the_text_are_rejected(incremental):
    text = "alpha = beta\n"
    ids = incremental.encode(text)
    with pytest.raises(TokenizerRoundTripError):
        incremental.edits_for_range(text, incremental.encode("alpha = gamma\n"), 0, 0, "x")
    with pytest.raises(ValueError, match="not a token id"):
        incremental.edits_for_range(text, [*ids[:-1], -1], 0, 0, "x")
    with pytest.raises(ValueError, match="not a token id"):
        incremental.edits_for_range(text, [*ids[:-1], 10**9], 0, 0, "x")
    stale = incremental.offsets(text, ids)
    other = "alpha = betb\n"
    with pytest.raises(ValueError):
        incremental.edits_for_range(other, ids, 0, 0, "x", offsets=stale)
    with pytest.raises(ValueError, match="not valid Unicode"):
        incremental.edits_for_range(text, ids, 0, 0, "\ud800")


def test_tokenizers_that_cannot_round_trip_are_refused():
    lowercasing = qwen_style()
    lowercasing.normalizer = normalizers.Lowercase()
    with pytest.raises(TokenizerRoundTripError):
        IncrementalTokenizer(lowercasing)
    with pytest.raises(TypeError):
        IncrementalTokenizer(object())
    sentencepiece = incremental_tokenizer("sentencepiece_style")
    text = "a = 1\n"
    with pytest.raises(TokenizerRoundTripError):
        sentencepiece.edits_for_range(text, sentencepiece.encode(text), 0, 0, "\u2581")


def test_verify_counts_mismatches():
    it = IncrementalTokenizer(qwen_style())
    assert it.verify("a b", it.encode("a b"))
    assert not it.verify("a b", it.encode("a c"))
    assert it.stats.mismatches == 1


def test_new_offsets_can_be_passed_back(incremental):
    text = _source("csv.py")
    ids = incremental.encode(text)
    offsets = incremental.offsets(text, ids)
    assert len(offsets) == len(ids) + 1
    for at, inserted in ((100, "x"), (5000, "\n\n    y = '\u00e9'\n"), (9000, "")):
        plan = incremental.edits_for_range(text, ids, at, at + 3, inserted, offsets=offsets)
        assert plan.new_offsets == incremental.offsets(plan.new_text, plan.new_ids)
        assert plan.new_ids == incremental.encode(plan.new_text)
        text, ids, offsets = plan.new_text, plan.new_ids, plan.new_offsets


# -- speed -------------------------------------------------------------------------------------


def test_keystroke_on_a_two_thousand_line_file_is_fast(incremental):
    text = _source("difflib.py")
    assert text.count("\n") >= 2000
    ids = incremental.encode(text)
    offsets = incremental.offsets(text, ids)
    cold, warm = [], []
    for step in range(40):
        at = (step * 7919) % len(text)
        began = time.perf_counter()
        incremental.edits_for_range(text, ids, at, at, "x")
        cold.append(time.perf_counter() - began)
        began = time.perf_counter()
        incremental.edits_for_range(text, ids, at, at, "x", offsets=offsets)
        warm.append(time.perf_counter() - began)
    # Bounds well above the measured ~1.5 ms / ~0.2 ms: the test machine may be busy.
    assert statistics.median(cold) < 0.015
    assert statistics.median(warm) < 0.005
