"""Which clients get the suggestion as a `textDocument/completion` menu item."""

from __future__ import annotations

import attrs
import pytest
from lsprotocol import types
from pytest_lsp import client_capabilities

from tests.lsp_session import inline, open_document, start_server, stats, wait_for_model

pytestmark = pytest.mark.asyncio

SOURCE = "import math\n\n\ndef area(radius):\n    return math.pi * radius ** 2\n\n\n" + "".join(
    f"def scaled_{i}(radius):\n    return area(radius) * {i}\n\n\n" for i in range(30)
)
LINE = SOURCE.split("\n").index("def scaled_3(radius):") + 1


def with_inline_completion() -> types.ClientCapabilities:
    """VS Code's and Neovim 0.12's answer: pytest-lsp's recorded clients predate the method."""
    recorded = client_capabilities("visual-studio-code")
    text_document = attrs.evolve(
        recorded.text_document,
        inline_completion=types.InlineCompletionClientCapabilities(dynamic_registration=True),
    )
    return attrs.evolve(recorded, text_document=text_document)


async def test_a_client_with_inline_completion_gets_no_menu_item(tiny_model_dir) -> None:
    client = await start_server(
        ["--model", str(tiny_model_dir)],
        initialization_options={"pieLsp": {"debounceMs": 0, "maxNewTokens": 8}},
        capabilities=with_inline_completion(),
    )
    try:
        assert (await wait_for_model(client))["modelState"] == "ready"
        uri = "file:///work/menu.py"
        open_document(client, uri, SOURCE)
        position = types.Position(line=LINE, character=len("    return area(radius) * 3"))
        menu = await client.text_document_completion_async(
            types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri), position=position
            )
        )
        assert menu is not None and not menu.items and not menu.is_incomplete
        # The menu request asked the model nothing; the ghost text still comes.
        assert (await stats(client, uri))["documents"][uri]["completions"] == 0
        await inline(client, uri, position.line, position.character)
        assert (await stats(client, uri))["documents"][uri]["completions"] == 1
    finally:
        await client.shutdown_session()
