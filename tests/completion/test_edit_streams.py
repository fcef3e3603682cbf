"""Random edit streams on held-out standard-library files, through the engine and the server.

After every change: the mirror holds the client's text, the cache decodes to the prompt the
window says it should hold, its ids are a fresh tokenization of that prompt, and when an edit
moved nothing but the last token `pie` predicts what `full` predicts. CI runs
`ENGINE_STEPS + SERVER_STEPS` steps; `PIE_LSP_EDIT_STEPS=20000` runs a longer stream.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sysconfig
from dataclasses import replace
from functools import cache
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from lsprotocol import types

from cache_engine.completion.engine import CompletionEngine
from cache_engine.completion.prompt_layout import assemble, part_starts
from cache_engine.completion.settings import CompletionSettings
from cache_engine.kv.editable_cache import EditableCache
from cache_engine.model.corpus import HELD_OUT_MODULES
from cache_engine.text.text_change import TextChange
from tests.lsp_session import open_document, start_server, stats, wait_for_model

TOTAL_STEPS = int(os.environ.get("PIE_LSP_EDIT_STEPS", "2400"))
# The engine is fast, so it carries most of the steps; the server checks the wire on the rest.
SERVER_STEPS = max(100, TOTAL_STEPS // 8)
ENGINE_STEPS = TOTAL_STEPS - SERVER_STEPS
STEPS_PER_STREAM = 30
URI = "file:///work/stream.py"

# Keystrokes and pastes that stress tokenization: line breaks of every style, tabs, characters
# outside the BMP (two UTF-16 units), a ZWJ sequence, special-token strings, NUL.
PIECES = (
    "x",
    " ",
    "    ",
    "\n",
    "\r\n",
    "\r",
    "\t",
    "\t\t",
    "\x00",
    "é",
    "中",
    "\U0001f600",
    "\U0001f9d1\u200d\U0001f4bb",
    "𝔘𝔫𝔦",
    "<|fim_middle|>",
    '"""',
    "):",
    "def f(a):\n    return a\n",
    "\r\n\t",
)
INSERTED = st.one_of(
    st.sampled_from(PIECES),
    st.lists(st.sampled_from(PIECES), min_size=2, max_size=4).map("".join),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=5),
)


@cache
def _source(name: str) -> str:
    return (Path(sysconfig.get_paths()["stdlib"]) / name).read_text(encoding="utf-8")


@st.composite
def documents(draw: st.DrawFn) -> str:
    lines = _source(draw(st.sampled_from(HELD_OUT_MODULES))).splitlines(keepends=True)
    start = draw(st.integers(0, len(lines) - 1))
    text = "".join(lines[start : start + draw(st.integers(0, 120))])
    style = draw(st.sampled_from(("plain", "crlf", "tabs", "mixed")))
    if style == "crlf":
        text = text.replace("\n", "\r\n")
    elif style == "tabs":
        text = text.replace("    ", "\t")
    elif style == "mixed":
        # Every third line break becomes CRLF and every fifth a lone CR.
        parts = text.split("\n")
        text = "".join(
            part + ("\r\n" if i % 3 == 1 else "\r" if i % 5 == 2 else "\n")
            for i, part in enumerate(parts[:-1])
        ) + (parts[-1] if parts else "")
    return text


def draw_change(data: st.DataObject, text: str) -> tuple[int, int, str, int]:
    """(start, end, inserted, cursor): an insert, delete or replace anywhere, and where the
    cursor is afterwards (mostly after the edit, as when typing)."""
    where = data.draw(st.sampled_from(("anywhere", "anywhere", "line start", "line end", "end")))
    start = data.draw(st.integers(0, len(text)))
    if where == "line start":
        start = text.rfind("\n", 0, start) + 1
    elif where == "line end":
        found = text.find("\n", start)
        start = len(text) if found < 0 else found
    elif where == "end":
        start = len(text)
    kind = data.draw(st.sampled_from(("insert", "insert", "delete", "replace")))
    removed = 0 if kind == "insert" else data.draw(st.sampled_from((1, 1, 2, 7, 60)))
    if where == "end" and kind != "insert":
        start = max(0, len(text) - removed)
    end = min(len(text), start + removed)
    inserted = "" if kind == "delete" else data.draw(INSERTED)
    new_length = len(text) - (end - start) + len(inserted)
    cursor = data.draw(
        st.sampled_from(("after", "after", "after", "random")).map(
            lambda c: start + len(inserted) if c == "after" else None
        )
    )
    if cursor is None:
        cursor = data.draw(st.integers(0, new_length))
    return start, end, inserted, cursor


# ---- through the engine ----------------------------------------------------------------------


def check_cache(engine: CompletionEngine, uri: str, text: str, cursor: int) -> None:
    region = engine.active_region(uri)
    snapshot = engine.documents.snapshot(uri)
    assert snapshot.text == text
    assert region is not None and region.cache is not None and region.prompt is not None
    window, prompt = snapshot.windows[region.id], region.prompt
    assert prompt.left + prompt.healed == text[window.start : cursor]
    ids = region.cache.token_ids
    tokenizer = engine.tokenizer
    if region.layout is None:
        assert prompt.right is None
        parts = [(prompt.left, ids)]
    else:
        assert prompt.right == text[cursor : window.end]
        left_at, right_at = part_starts(region.layout, region.left_tokens, region.right_tokens)
        left_ids = ids[left_at : left_at + region.left_tokens]
        right_ids = ids[right_at : right_at + region.right_tokens]
        assert ids == assemble(region.layout, engine._markers, left_ids, right_ids)
        parts = [(prompt.left, left_ids), (prompt.right, right_ids)]
    for part, part_ids in parts:
        assert tokenizer.decode(part_ids) == part
        # verify() counts a mismatch in tokenizer.stats; the test asserts the count stays 0.
        tokenizer.verify(part, part_ids)


def pie_matches_full(engine: CompletionEngine, uri: str) -> None:
    region = engine.active_region(uri)
    assert region is not None and region.cache is not None
    cache = region.cache
    fresh = EditableCache(engine.loaded.model, strategy="full")
    fresh.reset(cache.token_ids)
    with torch.no_grad():
        difference = (cache.next_token_logits() - fresh.next_token_logits()).abs().max()
    fresh.release()
    assert float(difference) <= 1e-4, f"pie and full logits differ by {float(difference)}"


def test_engine_follows_random_edit_streams(loaded_random_model) -> None:
    # A small budget and margin make the window move and be re-placed often, and three
    # regions a document make the cursor return to windows it left.
    base = CompletionSettings(
        max_new_tokens=1,
        max_prompt_tokens=192,
        window_margin_lines=2,
        max_regions=3,
        mid_line="always",
        # How many stale tokens get refreshed must not depend on the machine's speed.
        max_refresh_ms=0,
    )
    engines = (
        # Never refreshed before decoding: stale tokens pile up, a few refreshed after edits.
        CompletionEngine(loaded_random_model, replace(base, stale_budget=-1, refresh_after_edit=4)),
        # Refreshed before decoding whenever more than 8 tokens are stale.
        CompletionEngine(loaded_random_model, replace(base, stale_budget=8, fim_layout="spm")),
        # Without FIM the prompt ends at the cursor, so typing there touches only the end.
        CompletionEngine(replace(loaded_random_model, fim=None), replace(base, stale_budget=-1)),
    )
    mismatches_before = [e.tokenizer.stats.mismatches for e in engines]
    counts = {
        "steps": 0,
        "streams": 0,
        "exact_checked": 0,
        "pie": 0,
        "returns": 0,
        "typed_ahead": 0,
    }

    @settings(
        max_examples=math.ceil(ENGINE_STEPS / STEPS_PER_STREAM),
        deadline=None,
        derandomize=True,
        database=None,
        # Shrinking a stream of model calls takes minutes; the failing stream is printed.
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
    )
    @given(document=documents(), data=st.data())
    def stream(document: str, data: st.DataObject) -> None:
        counts["streams"] += 1
        engine = engines[data.draw(st.sampled_from((0, 1, 2)), label="engine")]
        text = document
        engine.open_document(URI, text, 1, "python")
        engine.complete(URI, data.draw(st.integers(0, len(text))))
        for version in range(2, STEPS_PER_STREAM + 2):
            start, end, inserted, cursor = draw_change(data, text)
            text = engine.change_document(URI, version, [TextChange(start, end, inserted)])
            shown = engine.documents.snapshot(URI).forward_typing
            completion = engine.complete(URI, cursor, version=version)
            if completion.source == "forward_typing":
                # The keys typed were the start of the last suggestion: the rest is answered
                # without the model, and the cache catches up at the next model completion,
                # which the next step checks. What the document holds since the suggestion's
                # place, then the answer, must be the suggestion.
                assert shown is not None
                assert text[shown.anchor : cursor] + completion.text == shown.suggestion
                assert engine.documents.snapshot(URI).text == text
                counts["typed_ahead"] += 1
            else:
                check_cache(engine, URI, text, cursor)
            stats = engine.stats(URI)[URI]
            if stats["last_edit_strategy"] == "pie":
                counts["pie"] += 1
            # Whenever the cache says nothing is stale, pie must agree with full exactly.
            cache = engine.active_region(URI).cache
            if len(cache) and cache.stale_tokens == 0:
                counts["exact_checked"] += 1
                pie_matches_full(engine, URI)
            counts["steps"] += 1
        counts["returns"] += int(engine.stats(URI)[URI]["region_returns"])

    stream()
    print(f"\nengine edit steps: {counts}")
    assert [e.tokenizer.stats.mismatches for e in engines] == mismatches_before
    assert counts["steps"] >= ENGINE_STEPS
    assert counts["pie"] > counts["steps"] // 2
    assert counts["exact_checked"] >= counts["steps"] // 4


# ---- through the server ----------------------------------------------------------------------


LINE_BREAK = re.compile("\r\n|\r|\n")


def client_position(text: str, offset: int) -> types.Position:
    """The LSP position of a str offset, computed as a client would (independently of the
    server's LineIndex): lines end at CRLF, CR or LF; columns count UTF-16 units."""
    line, line_start = 0, 0
    for match in LINE_BREAK.finditer(text, 0, offset):
        if match.end() > offset:
            break
        line, line_start = line + 1, match.end()
    column = len(text[line_start:offset].encode("utf-16-le")) // 2
    return types.Position(line=line, character=column)


def outside_crlf(text: str, offset: int) -> int:
    return (
        offset - 1 if 0 < offset < len(text) and text[offset - 1 : offset + 1] == "\r\n" else offset
    )


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.mark.asyncio
async def test_server_mirror_follows_random_edit_streams(tiny_model_dir) -> None:
    client = await start_server(
        ["--model", str(tiny_model_dir)],
        # VS Code offers only UTF-16 positions (Neovim's capabilities make pygls pick UTF-8).
        client="visual_studio_code",
        initialization_options={
            "pieLsp": {
                "debounceMs": 0,
                "maxNewTokens": 2,
                "maxPromptTokens": 192,
                "midLine": "always",
            }
        },
    )
    try:
        assert (await wait_for_model(client))["modelState"] == "ready"
        steps = 0
        streams = iter(range(10_000))
        source = documents()
        per_stream = 25

        @settings(
            max_examples=math.ceil(SERVER_STEPS / per_stream),
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(document=source, data=st.data())
        def draw_stream(document: str, data: st.DataObject) -> None:
            # Hypothesis cannot await: draw the whole stream here, replay it on the wire below.
            text, changes = document, []
            for _ in range(per_stream):
                start, end, inserted, cursor = draw_change(data, text)
                # No LSP position lies between the CR and LF of a CRLF.
                start, end = outside_crlf(text, start), outside_crlf(text, end)
                new_text = text[:start] + inserted + text[end:]
                cursor = outside_crlf(new_text, min(cursor, len(new_text)))
                changes.append((text, start, end, inserted, cursor))
                text = text[:start] + inserted + text[end:]
            drawn.append((document, changes))

        drawn: list[tuple[str, list[tuple[str, int, int, str, int]]]] = []
        draw_stream()
        for document, changes in drawn:
            uri = f"file:///work/stream_{next(streams)}.py"
            open_document(client, uri, document)
            for version, (text, start, end, inserted, cursor) in enumerate(changes, start=2):
                client.text_document_did_change(
                    types.DidChangeTextDocumentParams(
                        text_document=types.VersionedTextDocumentIdentifier(
                            uri=uri, version=version
                        ),
                        content_changes=[
                            types.TextDocumentContentChangePartial(
                                range=types.Range(
                                    start=client_position(text, start),
                                    end=client_position(text, end),
                                ),
                                text=inserted,
                            )
                        ],
                    )
                )
                expected = text[:start] + inserted + text[end:]
                if version % 5 == 0:
                    position = client_position(expected, cursor)
                    await client.text_document_inline_completion_async(
                        types.InlineCompletionParams(
                            text_document=types.TextDocumentIdentifier(uri=uri),
                            position=position,
                            context=types.InlineCompletionContext(
                                trigger_kind=types.InlineCompletionTriggerKind.Automatic
                            ),
                        )
                    )
                document_stats = (await stats(client, uri))["documents"][uri]
                assert document_stats["version"] == version
                assert document_stats["text_sha256"] == sha256(expected), (start, end, inserted)
                steps += 1
            client.text_document_did_close(
                types.DidCloseTextDocumentParams(
                    text_document=types.TextDocumentIdentifier(uri=uri)
                )
            )
        print(f"\nserver edit steps: {steps}")
        assert steps >= SERVER_STEPS
        errors = [m.message for m in client.log_messages if m.type == types.MessageType.Error]
        assert errors == []
    finally:
        await client.shutdown_session()
        await client.stop()
