"""A request made while the user types along a running generation waits for it, in process.

The stdio tests cannot hold a generation open while they type: a model decodes a suggestion
in tens of milliseconds. Here the server runs in this process and the engine's stop check,
which a generation calls before it decodes, blocks until the test has typed and asked again.
The shipped model, with its confidence gate off, gives the suggestion to type along (the tiny
random model's suggestions here are empty after the stop rules).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
from lsprotocol import types

from cache_engine.model.loading import DEFAULT_MODEL_DIR
from lsp_server.server import LaunchOptions, PieLanguageServer
from tests.lsp_session import change_params

pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "model.safetensors").exists(),
    reason=f"the default model has not been trained into {DEFAULT_MODEL_DIR}",
)

SOURCE = (
    "import math\n\n\n"
    "def area(radius):\n    \n    return math.pi * radius ** 2\n\n\n"
    "def perimeter(radius):\n    \n    return 2 * math.pi * radius\n\n\n"
    "class Circle:\n    def __init__(self, radius):\n        \n"
)
# The indented empty lines, each a place to ask for the line a user is about to write.
PLACES = [
    types.Position(line=number, character=len(line))
    for number, line in enumerate(SOURCE.split("\n"))
    if line and not line.strip()
]
URI = "file:///work/along.py"


class HeldGeneration:
    """Wraps the engine's `complete` so that the next generation waits, inside the model's
    work, until `release` is set; `entered` is set when it got there."""

    def __init__(self, complete: Callable[..., object]) -> None:
        self.complete = complete
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, *args: object, should_stop: Callable[[], bool], **kwargs: object) -> object:
        self.calls += 1

        def held_stop() -> bool:
            if not self.entered.is_set():
                self.entered.set()
                self.release.wait(timeout=60)
            return should_stop()

        return self.complete(*args, should_stop=held_stop, **kwargs)


def edit(
    server: PieLanguageServer, version: int, start: types.Position, end: int, text: str
) -> None:
    """Replace the characters of start's line from start up to column `end` with text."""
    server.change_document(
        change_params(URI, version, (start.line, start.character), (start.line, end), text)
    )


@pytest.fixture
async def server() -> AsyncIterator[PieLanguageServer]:
    """An in-process server on the shipped model, gate off, no debounce, SOURCE open.

    The model alone: mixed with SOURCE's n-grams, the suggestion at each blank indented line
    is a newline and the other function's `return` line (SOURCE has two such lines, each
    followed by a return), and typing along a newline is not what these tests type."""
    server = PieLanguageServer(LaunchOptions(model="default"))
    ungated = replace(
        server.settings.completion, min_confidence=0.0, min_token_prob=0.0, document_ngram_weight=0
    )
    server.settings = replace(server.settings, completion=ungated, debounce_ms=0, idle_refresh_ms=0)
    server.engine = await server.worker.run(server._build_engine)
    server.open_document(
        types.TextDocumentItem(uri=URI, language_id="python", version=1, text=SOURCE)
    )
    try:
        yield server
    finally:
        held = server.engine.complete
        if isinstance(held, HeldGeneration):
            held.release.set()
        server.worker.shutdown()


def hold_next_generation(server: PieLanguageServer) -> HeldGeneration:
    """Make the next request at an answered place start a generation, and hold it.

    Types a character at the top of the file and takes it back: the same text at a new
    version (versions 2 and 3), and an edit away from the suggestion, so neither the answer
    nor typing ahead into it serves the next request."""
    top = types.Position(line=0, character=0)
    edit(server, 2, top, 0, "x")
    edit(server, 3, top, 1, "")
    assert server.engine is not None
    held = HeldGeneration(server.engine.complete)
    server.engine.complete = held  # type: ignore[method-assign]
    return held


async def test_typing_along_a_running_generation_is_answered_from_it(server) -> None:
    tried = {}
    for cursor in PLACES:
        tried[cursor.line] = predicted = await server.complete(URI, cursor)
        if predicted and len(predicted) >= 2:
            break
    else:
        pytest.fail(f"no suggestion of 2 characters or more to type along: {tried}")
    held = hold_next_generation(server)
    first = asyncio.ensure_future(server.complete(URI, cursor))
    assert await asyncio.to_thread(held.entered.wait, 60), "the generation never started"

    # The user types the suggestion's first character while the model works on it, and
    # the editor asks again one character further on.
    edit(server, 4, cursor, cursor.character, predicted[0])
    along = types.Position(line=cursor.line, character=cursor.character + 1)
    second = asyncio.ensure_future(server.complete(URI, along))
    await asyncio.sleep(0)  # complete() runs up to its wait for the generation
    counters = server.stats(URI)["documents"][URI]  # type: ignore[index]
    assert counters["typed_along_generations"] == 1
    assert server._generations[URI].waiters == 2
    held.release.set()

    assert await asyncio.wait_for(second, 60) == predicted[1:]
    await asyncio.wait_for(first, 60)
    assert held.calls == 1  # the request along started no generation of its own


async def test_text_typed_while_the_model_works_stays_out_of_the_item(server) -> None:
    cursor = PLACES[0]
    predicted = await server.complete(URI, cursor)
    if not predicted:
        pytest.skip(f"no suggestion at {cursor} to hold")
    held = hold_next_generation(server)
    items = asyncio.ensure_future(server.inline_items(URI, cursor))
    assert await asyncio.to_thread(held.entered.wait, 60), "the generation never started"
    # Keys that do not match the suggestion, typed at the cursor before the answer.
    edit(server, 4, cursor, cursor.character, "zq")
    held.release.set()
    answered = await asyncio.wait_for(items, 60)
    # The answer is for the line as the request found it, with nothing after the cursor.
    assert [(item.insert_text, item.range.end) for item in answered] == [(predicted, cursor)]
