"""Which clients get the suggestion as a `textDocument/completion` menu item."""

from __future__ import annotations

import pytest
from lsprotocol import types

from tests.lsp_session import inline, open_document, start_server, stats, wait_for_model

pytestmark = pytest.mark.asyncio

SOURCE = "import math\n\n\ndef area(radius):\n    return math.pi * radius ** 2\n\n\n" + "".join(
    f"def scaled_{i}(radius):\n    return area(radius) * {i}\n\n\n" for i in range(30)
)
LINE = SOURCE.split("\n").index("def scaled_3(radius):") + 1


async def test_a_client_that_asks_for_ghost_text_gets_no_menu_item(tiny_model_dir) -> None:
    """Capabilities do not tell whether a client shows ghost text, its requests do: the menu
    item serves a document until the client asks for ghost text there."""
    client = await start_server(
        ["--model", str(tiny_model_dir)],
        initialization_options={"pieLsp": {"debounceMs": 0, "maxNewTokens": 8}},
    )
    try:
        assert (await wait_for_model(client))["modelState"] == "ready"
        uri = "file:///work/menu.py"
        open_document(client, uri, SOURCE)
        position = types.Position(line=LINE, character=len("    return area(radius) * 3"))
        params = types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=position
        )
        menu = await client.text_document_completion_async(params)
        assert menu is not None and menu.items and menu.items[0].detail == "pie-lsp"
        await inline(client, uri, position.line, position.character)
        completions = (await stats(client, uri))["documents"][uri]["completions"]
        menu = await client.text_document_completion_async(params)
        assert menu is not None and not menu.items and not menu.is_incomplete
        # The menu request asked the model nothing.
        assert (await stats(client, uri))["documents"][uri]["completions"] == completions
    finally:
        await client.shutdown_session()
