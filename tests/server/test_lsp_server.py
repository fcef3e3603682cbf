"""pie-lsp over stdio with a pytest-lsp client and a tiny random-weight model.

One server serves the whole module (starting one costs seconds of imports); each test uses its
own document URIs so the tests do not depend on one another's documents.
"""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled
from pytest_lsp import LanguageClient

from tests.lsp_session import (
    change,
    inline,
    inline_params,
    open_document,
    start_server,
    stats,
    wait_for_model,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _filler(name: str, count: int) -> str:
    return "".join(
        f"def {name}_{i}(values):\n    total = sum(values) + {i}\n    return total\n\n\n"
        for i in range(count)
    )


SOURCE = (
    "import math\n\n\n"
    + _filler("above", 12)
    + "def area(radius):\n    return math.pi * radius ** 2\n\n\n"
    + "def perimeter(radius):\n    \n    return 2 * math.pi * radius\n\n\n"
    + "def volume(radius):\n    return 4 / 3 * math.pi * radius ** 3\n\n\n"
    + _filler("below", 12)
)
LINES = SOURCE.split("\n")
AREA_LINE = LINES.index("def area(radius):")
CURSOR_LINE = LINES.index("def perimeter(radius):") + 1  # the empty line in perimeter()
VOLUME_LINE = LINES.index("def volume(radius):")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(tiny_model_dir):
    lsp_client = await start_server(
        ["--model", str(tiny_model_dir)],
        initialization_options={"pieLsp": {"debounceMs": 0, "maxNewTokens": 16}},
    )
    ready = await wait_for_model(lsp_client)
    assert ready["modelState"] == "ready", ready
    yield lsp_client
    await lsp_client.shutdown_session()
    await lsp_client.stop()


async def test_capabilities_and_progress(client: LanguageClient) -> None:
    # The model loaded in the background after initialize, under a progress token.
    reports = [r for values in client.progress_reports.values() for r in values]
    assert isinstance(reports[0], types.WorkDoneProgressBegin)
    assert isinstance(reports[-1], types.WorkDoneProgressEnd)
    assert any("ready" in m.message for m in client.log_messages)


async def test_edits_above_and_below_then_inline_completion(client: LanguageClient) -> None:
    uri = "file:///work/shapes.py"
    open_document(client, uri, SOURCE)
    await inline(client, uri, CURSOR_LINE, 4)
    first = (await stats(client, uri))["documents"][uri]
    assert first["last_edit_strategy"] == "full"
    change(client, uri, 2, (AREA_LINE, 4), (AREA_LINE, 8), "surface")  # above the cursor
    change(client, uri, 3, (VOLUME_LINE, 4), (VOLUME_LINE, 10), "capacity")  # below it
    change(client, uri, 4, (CURSOR_LINE, 4), (CURSOR_LINE, 4), "r = ")  # at the cursor
    items = await inline(client, uri, CURSOR_LINE, 8)
    after = (await stats(client, uri))["documents"][uri]
    assert after["last_edit_strategy"] == "pie"
    assert after["cache_syncs"] == first["cache_syncs"] + 1
    assert after["last_edit"]["tokens_encoded"] < 0.2 * after["tokens_cached"]
    for item in items:
        assert item.range == types.Range(
            start=types.Position(line=CURSOR_LINE, character=8),
            end=types.Position(line=CURSOR_LINE, character=8),
        )
        assert item.insert_text


async def test_plain_completion(client: LanguageClient) -> None:
    uri = "file:///work/plain.py"
    open_document(client, uri, SOURCE)
    result = await client.text_document_completion_async(
        types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=CURSOR_LINE, character=4),
        )
    )
    assert isinstance(result, types.CompletionList) and result.is_incomplete
    for item in result.items:
        assert item.text_edit is not None and item.text_edit.new_text


async def test_cancel_request_stops_the_work(client: LanguageClient) -> None:
    uri = "file:///work/cancel.py"
    open_document(client, uri, SOURCE)
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"pieLsp": {"debounceMs": 500}})
    )
    before = (await stats(client))["settings"]
    assert before["debounceMs"] == 500
    future = asyncio.ensure_future(
        client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION,
            inline_params(uri, CURSOR_LINE, 4),
            msg_id="cancel-me",
        )
    )
    await asyncio.sleep(0.1)
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-me"))
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(future, 10)
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"pieLsp": {"debounceMs": 0}})
    )
    assert (await stats(client))["settings"]["debounceMs"] == 0
    # The cancelled request never reached the model.
    assert (await stats(client, uri))["documents"].get(uri, {}).get("completions", 0) == 0


async def test_stats_name_the_confidence_gate_in_force(client: LanguageClient) -> None:
    """-1 in the settings means the model's calibrated values: the stats say what they are
    (the tiny model has none, so 0), and a value set by the client replaces them."""
    assert (await stats(client))["confidenceGate"] == {"minConfidence": 0.0, "minTokenProb": 0.0}
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"pieLsp": {"minConfidence": 0.25}})
    )
    try:
        result = await stats(client)
        assert result["settings"]["minTokenProb"] == -1
        assert result["confidenceGate"] == {"minConfidence": 0.25, "minTokenProb": 0.0}
    finally:
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"pieLsp": {"minConfidence": -1}})
        )
    assert (await stats(client))["confidenceGate"]["minConfidence"] == 0.0


async def test_newer_request_supersedes_the_one_in_flight(client: LanguageClient) -> None:
    uri = "file:///work/supersede.py"
    open_document(client, uri, SOURCE)
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"pieLsp": {"debounceMs": 300}})
    )
    await stats(client)
    first = asyncio.ensure_future(inline(client, uri, CURSOR_LINE, 4))
    await asyncio.sleep(0.05)
    # Elsewhere (a request at the same place would share the first one's generation).
    second = asyncio.ensure_future(inline(client, uri, CURSOR_LINE, 2))
    assert await first == []
    await second
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"pieLsp": {"debounceMs": 0}})
    )
    assert (await stats(client, uri))["documents"][uri]["completions"] == 1


async def test_configuration_change_takes_effect_and_bad_settings_are_refused(
    client: LanguageClient,
) -> None:
    uri = "file:///work/config.py"
    open_document(client, uri, SOURCE)
    await inline(client, uri, CURSOR_LINE, 4)
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"pieLsp": {"strategy": "prefix"}})
    )
    change(client, uri, 2, (CURSOR_LINE, 4), (CURSOR_LINE, 4), "x")
    await inline(client, uri, CURSOR_LINE, 5)
    assert (await stats(client, uri))["documents"][uri]["last_edit_strategy"] == "prefix"

    shown = len(client.messages)
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"pieLsp": {"strategy": "fastest"}})
    )
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"pieLsp": {"maxNewTokens": -3}})
    )
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"pieLsp": {"colour": "blue"}})
    )
    result = await stats(client)
    assert result["strategy"] == "prefix"
    errors = [m.message for m in client.messages[shown:]]
    assert len(errors) == 3
    assert "'fastest'" in errors[0] and "-3" in errors[1] and "'colour'" in errors[2]
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"pieLsp": {"strategy": "pie"}})
    )
    assert (await stats(client))["strategy"] == "pie"


async def test_close_forgets_the_document(client: LanguageClient) -> None:
    uri = "file:///work/closing.py"
    open_document(client, uri, SOURCE)
    await inline(client, uri, 1, 0)
    assert uri in (await stats(client))["documents"]
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
    )
    assert uri not in (await stats(client))["documents"]
    assert await inline(client, uri, 1, 0) == []


async def test_utf16_positions_with_non_bmp_characters_and_crlf(client: LanguageClient) -> None:
    uri = "file:///work/emoji.py"
    text = 's = "😀😀"\r\nt = "é"\r\n\r\n'
    open_document(client, uri, text)
    # Line 0: 's = "' is 5 units, each 😀 is 2: after both emoji the column is 9.
    change(client, uri, 2, (0, 9), (0, 9), "x")
    change(client, uri, 3, (1, 6), (1, 6), "y")  # after 'é'
    change(client, uri, 4, (2, 0), (2, 0), "z = 1")
    expected = 's = "😀😀x"\r\nt = "éy"\r\nz = 1\r\n'
    await inline(client, uri, 2, 5)
    document = (await stats(client, uri))["documents"][uri]
    assert document["chars"] == len(expected)
    assert document["version"] == 4
    # A position between the two halves of an emoji is answered, not fatal.
    assert isinstance(await inline(client, uri, 0, 6), list)


async def test_bad_inputs_are_survived(client: LanguageClient) -> None:
    uri = "file:///work/victim.py"
    open_document(client, uri, SOURCE)
    # Unknown document, out-of-range position.
    assert await inline(client, "file:///work/never-opened.py", 0, 0) == []
    assert await inline(client, uri, 999, 0) == []
    # didChange for a closed document, a range past the end, a range ending before it starts.
    change(client, "file:///work/never-opened.py", 2, (0, 0), (0, 0), "x")
    change(client, uri, 2, (500, 0), (501, 0), "x")
    change(client, uri, 3, (2, 0), (1, 0), "x")
    # A version going backwards is applied (the text is the client's), with an error logged.
    change(client, uri, 1, (0, 0), (0, 0), "# header\n")
    # Empty file, NUL bytes, a 5 MB file.
    open_document(client, "file:///work/empty.py", "")
    assert isinstance(await inline(client, "file:///work/empty.py", 0, 0), list)
    open_document(client, "file:///work/nul.py", "a = '\x00\x00'\nb = \x00")
    assert isinstance(await inline(client, "file:///work/nul.py", 1, 4), list)
    big = "x = 1  # filler line for a large file\n" * 140_000
    open_document(client, "file:///work/big.py", big)
    assert isinstance(await inline(client, "file:///work/big.py", 70_000, 5), list)
    big_stats = (await stats(client, "file:///work/big.py"))["documents"]["file:///work/big.py"]
    assert big_stats["tokens_cached"] <= 1536
    # The victim still works and holds exactly the change that was valid.
    await inline(client, uri, CURSOR_LINE + 1, 4)
    victim = (await stats(client, uri))["documents"][uri]
    assert victim["chars"] == len("# header\n" + SOURCE)
    errors = [m.message for m in client.log_messages if m.type == types.MessageType.Error]
    assert any("never-opened" in m for m in errors)
    assert any("back to 1" in m for m in errors)
    assert any("ends before it starts" in m for m in errors)
    assert any("past the end" in m for m in errors)


async def test_typing_what_was_predicted_is_served_without_the_model(
    client: LanguageClient,
) -> None:
    uri = "file:///work/forward.py"
    open_document(client, uri, SOURCE)
    items = await inline(client, uri, CURSOR_LINE, 4)
    if not items or len(items[0].insert_text) < 3:
        pytest.skip("the random model's completion here is too short to type ahead into")
    predicted = items[0].insert_text
    before = (await stats(client, uri))["documents"][uri]
    typed = predicted[:2]
    change(client, uri, 2, (CURSOR_LINE, 4), (CURSOR_LINE, 4), typed)
    served = await inline(client, uri, CURSOR_LINE, 4 + len(typed))
    assert [item.insert_text for item in served] == [predicted[2:]]
    after = (await stats(client, uri))["documents"][uri]
    assert after["forward_typing_hits"] == before["forward_typing_hits"] + 1
    assert after["completions"] == before["completions"]
    assert after["cache_syncs"] == before["cache_syncs"]


async def test_idle_refresh_makes_the_cache_exact_after_a_pause(client: LanguageClient) -> None:
    uri = "file:///work/idle.py"
    open_document(client, uri, SOURCE)
    # No refresh before decoding, so only the idle refresh can make the cache exact.
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(
            settings={"pieLsp": {"staleBudget": -1, "fimLayout": "psm", "idleRefreshMs": 50}}
        )
    )
    try:
        await inline(client, uri, CURSOR_LINE, 4)
        change(client, uri, 2, (CURSOR_LINE, 4), (CURSOR_LINE, 4), "x")
        await inline(client, uri, CURSOR_LINE, 5)
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            document = (await stats(client, uri))["documents"][uri]
            if document["refreshes"] >= 1 and document["stale_tokens"] == 0:
                break
            assert asyncio.get_running_loop().time() < deadline, document
            await asyncio.sleep(0.05)
        assert document["tokens_refreshed_total"] > 0
    finally:
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(
                settings={"pieLsp": {"staleBudget": 0, "fimLayout": "auto", "idleRefreshMs": 400}}
            )
        )


async def test_completion_and_inline_requests_share_one_generation(
    client: LanguageClient,
) -> None:
    """A client may send both at once (before it has asked for ghost text in the document, the
    menu request is answered): neither may cancel the other."""
    uri = "file:///work/shared.py"
    open_document(client, uri, SOURCE)
    position = types.Position(line=CURSOR_LINE, character=4)
    menu, ghost = await asyncio.gather(
        client.text_document_completion_async(
            types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri), position=position
            )
        ),
        client.text_document_inline_completion_async(inline_params(uri, CURSOR_LINE, 4)),
    )
    document = (await stats(client, uri))["documents"][uri]
    assert document["completions"] == 1
    assert document["shared_generations"] == 1
    items = ghost.items if isinstance(ghost, types.InlineCompletionList) else ghost
    if items:
        assert menu.items and menu.items[0].text_edit.new_text.endswith(items[0].insert_text)


async def test_a_request_after_the_generation_at_its_place_ended_gets_its_answer(
    client: LanguageClient,
) -> None:
    """A client's second request at a place can come after the first has finished there:
    the same document at the same place is answered without decoding again, even when the
    answer was empty; an edit or a settings change asks the model again."""
    uri = "file:///work/answered.py"
    open_document(client, uri, SOURCE)
    first = await inline(client, uri, CURSOR_LINE, 4)
    second = await inline(client, uri, CURSOR_LINE, 4)
    document = (await stats(client, uri))["documents"][uri]
    assert document["completions"] == 1
    assert document["reused_answers"] == 1
    assert [item.insert_text for item in second] == [item.insert_text for item in first]
    change(client, uri, 2, (CURSOR_LINE, 4), (CURSOR_LINE, 4), "x")
    change(client, uri, 3, (CURSOR_LINE, 4), (CURSOR_LINE, 5), "")
    await inline(client, uri, CURSOR_LINE, 4)  # the same text, but another version
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"pieLsp": {"maxNewTokens": 8}})
    )
    try:
        await inline(client, uri, CURSOR_LINE, 4)
    finally:
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"pieLsp": {"maxNewTokens": 16}})
        )
    document = (await stats(client, uri))["documents"][uri]
    assert document["completions"] == 3
    assert document["reused_answers"] == 1


async def test_accepts_are_counted_locally(client: LanguageClient) -> None:
    uri = "file:///work/accepts.py"
    open_document(client, uri, SOURCE)
    items = await inline(client, uri, CURSOR_LINE, 4)
    document = (await stats(client, uri))["documents"][uri]
    assert document["suggestions_offered"] == (1 if items else 0)
    if items:
        command = items[0].command
        assert command is not None and command.command == "pie-lsp.accepted"
        await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command=command.command, arguments=command.arguments)
        )
        assert (await stats(client, uri))["documents"][uri]["suggestions_accepted"] == 1
