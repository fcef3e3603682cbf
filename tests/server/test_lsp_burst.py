"""A fast typist: 300 keystrokes 20 ms apart, each followed by an inline completion request."""

from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types

from tests.lsp_session import (
    change,
    inline_params,
    open_document,
    start_server,
    stats,
    wait_for_model,
)

KEYSTROKES = 300


def two_thousand_token_file() -> str:
    return "".join(
        f"def helper_{i}(values):\n    total = sum(values) + {i}\n    return total\n\n\n"
        for i in range(110)
    )


@pytest.mark.asyncio
async def test_burst_of_keystrokes_with_completion_requests(tiny_model_dir) -> None:
    client = await start_server(
        ["--model", str(tiny_model_dir)],
        client="visual_studio_code",
        initialization_options={"pieLsp": {"maxNewTokens": 16}},
    )
    try:
        assert (await wait_for_model(client))["modelState"] == "ready"
        uri = "file:///work/burst.py"
        text = two_thousand_token_file()
        open_document(client, uri, text)
        line = text.count("\n") // 2
        typed = ("value = compute(total, count) + 1\n    " * 20)[:KEYSTROKES]
        column, row = 4, line
        change(client, uri, 2, (row, 0), (row, 0), "    \n")
        requests = []
        for version, key in enumerate(typed, start=3):
            change(client, uri, version, (row, column), (row, column), key)
            if key == "\n":
                row, column = row + 1, 0
            else:
                column += 1
            requests.append(
                client.text_document_inline_completion_async(inline_params(uri, row, column))
            )
            await asyncio.sleep(0.02)
        # A generous hang guard, not a latency target.
        answers = await asyncio.wait_for(asyncio.gather(*requests, return_exceptions=True), 120)
        failures = [a for a in answers if isinstance(a, BaseException)]
        assert failures == []
        document = (await stats(client, uri))["documents"][uri]
        assert document["version"] == 2 + KEYSTROKES
        assert document["max_pending_generations"] == 1
        # The last request was not superseded: it ran on the final text.
        assert document["completions"] >= 1
        final = await client.text_document_inline_completion_async(inline_params(uri, row, column))
        assert answers[-1] == final or final is not None
        errors = [m.message for m in client.log_messages if m.type == types.MessageType.Error]
        assert errors == []
    finally:
        await client.shutdown_session()
        await client.stop()
