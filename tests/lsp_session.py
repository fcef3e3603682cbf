"""Starting pie-lsp under a pytest-lsp client, and small helpers for the LSP tests."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from tests.conftest import REPO


async def start_server(
    arguments: Sequence[str],
    *,
    initialization_options: Any = None,
    client: str = "neovim",
) -> LanguageClient:
    config = ClientServerConfig(
        server_command=[sys.executable, "-m", "lsp_server", *arguments],
        server_env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
    )
    lsp_client = await config.start()
    await lsp_client.initialize_session(
        types.InitializeParams(
            capabilities=client_capabilities(client),
            initialization_options=initialization_options,
        )
    )
    return lsp_client


async def stats(client: LanguageClient, uri: str | None = None) -> dict[str, Any]:
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="pie-lsp.stats", arguments=[uri] if uri else [])
    )


async def wait_for_model(client: LanguageClient, timeout: float = 120) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await stats(client)
        if result["modelState"] not in ("not loaded", "loading"):
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"model still {result['modelState']} after {timeout} s")
        await asyncio.sleep(0.2)


def open_document(
    client: LanguageClient, uri: str, text: str, version: int = 1, language: str = "python"
) -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=uri, language_id=language, version=version, text=text
            )
        )
    )


def change_params(
    uri: str, version: int, start: tuple[int, int], end: tuple[int, int], text: str
) -> types.DidChangeTextDocumentParams:
    """A didChange that replaces (line, character) start..end with text."""
    return types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[
            types.TextDocumentContentChangePartial(
                range=types.Range(
                    start=types.Position(line=start[0], character=start[1]),
                    end=types.Position(line=end[0], character=end[1]),
                ),
                text=text,
            )
        ],
    )


def change(
    client: LanguageClient,
    uri: str,
    version: int,
    start: tuple[int, int],
    end: tuple[int, int],
    text: str,
) -> None:
    client.text_document_did_change(change_params(uri, version, start, end, text))


def inline_params(uri: str, line: int, character: int) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(
            trigger_kind=types.InlineCompletionTriggerKind.Automatic
        ),
    )


async def inline(
    client: LanguageClient, uri: str, line: int, character: int
) -> list[types.InlineCompletionItem]:
    result = await client.text_document_inline_completion_async(inline_params(uri, line, character))
    if result is None:
        return []
    return list(result.items) if isinstance(result, types.InlineCompletionList) else list(result)
