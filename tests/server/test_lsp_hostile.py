"""Hostile documents over pytest-lsp: each is opened, edited and completed in, and afterwards an
ordinary document still completes. Every request runs under a hang guard."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest
import pytest_asyncio
from pytest_lsp import LanguageClient

from tests.lsp_session import change, inline, open_document, start_server, stats, wait_for_model

pytestmark = pytest.mark.asyncio(loop_scope="module")

T = TypeVar("T")
GUARD = 60  # seconds: a hang guard, not a latency target
HUGE = 2**31 - 1  # what a client's -1 becomes when sent as an unsigned LSP integer
ORDINARY = "".join(f"def f_{i}(x):\n    return x * {i}\n\n\n" for i in range(20))


async def guarded(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, GUARD)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(tiny_model_dir):
    lsp_client = await start_server(
        ["--model", str(tiny_model_dir)],
        # Completions at line starts before code: robustness, not the mid-line policy, is tested.
        initialization_options={
            "pieLsp": {"debounceMs": 0, "maxNewTokens": 8, "midLine": "always"}
        },
    )
    assert (await wait_for_model(lsp_client))["modelState"] == "ready"
    yield lsp_client
    await lsp_client.shutdown_session()
    await lsp_client.stop()


async def still_serves(client: LanguageClient, name: str) -> None:
    uri = f"file:///work/after-{name}.py"
    open_document(client, uri, ORDINARY)
    await guarded(inline(client, uri, 4, 0))
    document = (await guarded(stats(client, uri)))["documents"][uri]
    assert document["completions"] == 1 and document["tokens_cached"] > 0


async def survive(client: LanguageClient, name: str, text: str, edit_at: tuple[int, int]) -> None:
    uri = f"file:///work/{name}.py"
    open_document(client, uri, text)
    assert isinstance(await guarded(inline(client, uri, *edit_at)), list)
    change(client, uri, 2, edit_at, edit_at, "x = (1,\n")
    assert isinstance(await guarded(inline(client, uri, edit_at[0] + 1, 0)), list)
    document = (await guarded(stats(client, uri)))["documents"][uri]
    assert document["chars"] == len(text) + len("x = (1,\n")
    await still_serves(client, name)


async def test_ten_megabyte_single_line(client: LanguageClient) -> None:
    line = "value = 1; " * (10 * 2**20 // 11)
    await survive(client, "one-line", line, (0, len(line) // 2))


async def test_ten_thousand_nested_brackets(client: LanguageClient) -> None:
    text = "x = " + "(" * 10_000 + "1" + ")" * 10_000 + "\n"
    await survive(client, "nested", text, (0, 4 + 10_000))


async def test_only_whitespace(client: LanguageClient) -> None:
    text = " \t \n\n    \t\n" * 2000
    await survive(client, "blank", text, (1000, 2))


async def test_mixed_line_endings(client: LanguageClient) -> None:
    text = "a = 1\r\nb = 2\nc = 3\rd = 4\r\n\n\r\re = 5\n" * 200
    await survive(client, "endings", text, (3, 2))


async def test_invalid_positions(client: LanguageClient) -> None:
    uri = "file:///work/positions.py"
    open_document(client, uri, ORDINARY)
    lines = ORDINARY.count("\n")
    # Lines past the end are refused; a character past the end of its line means the end of
    # the line (LSP spec), so those edits and completions are served.
    bad = [(lines + 5, 0), (HUGE, HUGE), (HUGE, 0), (2, 500), (0, HUGE)]
    for number, (line, character) in enumerate(bad):
        change(client, uri, 2 * number + 2, (line, character), (line, character), "y")
        change(client, uri, 2 * number + 3, (0, 0), (line, character), "z\n")
        assert isinstance(await guarded(inline(client, uri, line, character)), list)
    document = (await guarded(stats(client, uri)))["documents"][uri]
    assert document["version"] == 2 * len(bad) + 1
    await still_serves(client, "positions")
