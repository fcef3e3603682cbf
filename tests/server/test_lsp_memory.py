"""memoryBudgetMb bounds the KV caches of many open documents, and an evicted one comes back.

One raw server subprocess (tests/test_lsp_faults.py's `Server`) with the tiny random-weight
model; 50 documents of about 2k tokens (slices of standard-library modules), one completion in
each, with a budget worth 10 documents' caches.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Any

import pytest

from tests.server.test_lsp_faults import Server

DOCUMENTS = 50
KEPT = 10  # documents' worth of cache in the budget
CHARS = 12000  # about 2k tokens of Python
MAX_NEW_TOKENS = 16  # Server.initialize's setting
MIB = 1024 * 1024
SOURCES = ("argparse.py", "inspect.py", "typing.py", "subprocess.py", "tarfile.py", "zipfile.py")


def documents() -> list[str]:
    """DOCUMENTS distinct slices of real code, cut at line boundaries."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lines = [
        line
        for name in SOURCES
        for line in (stdlib / name).read_text(encoding="utf-8").splitlines(keepends=True)
    ]
    result, current = [], ""
    for line in lines:
        current += line
        if len(current) >= CHARS:
            result.append(current)
            current = ""
        if len(result) == DOCUMENTS:
            return result
    raise AssertionError(f"only {len(result)} slices of {CHARS} characters in {SOURCES}")


def uri(index: int) -> str:
    return f"file:///doc_{index:02d}.py"


def cursor(text: str) -> tuple[int, int]:
    """(line, str offset) of the start of the middle line."""
    lines = text.splitlines(keepends=True)
    line = len(lines) // 2
    return line, sum(len(part) for part in lines[:line])


def vm_rss(pid: int) -> int:
    for entry in Path(f"/proc/{pid}/status").read_text().splitlines():
        if entry.startswith("VmRSS:"):
            return int(entry.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Client:
    def __init__(self, server: Server):
        self.server = server
        self.next_id = 100

    async def request(self, method: str, params: Any) -> Any:
        self.next_id += 1
        answer = await self.server.request(self.next_id, method, params)
        assert "error" not in answer, answer
        return answer["result"]

    async def stats(self) -> dict[str, dict[str, Any]]:
        params = {"command": "pie-lsp.stats", "arguments": []}
        return (await self.request("workspace/executeCommand", params))["documents"]

    def open(self, index: int, text: str) -> None:
        document = {"uri": uri(index), "languageId": "python", "version": 1, "text": text}
        self.server.send({"method": "textDocument/didOpen", "params": {"textDocument": document}})

    async def complete(self, index: int, line: int) -> str:
        params = {
            "textDocument": {"uri": uri(index)},
            "position": {"line": line, "character": 0},
            "context": {"triggerKind": 2},
        }
        items = await self.request("textDocument/inlineCompletion", params)
        return items[0]["insertText"] if items else ""


def fresh_completion(model: Path, text: str, offset: int) -> str:
    """The completion of a brand-new engine in this process (greedy: deterministic)."""
    from cache_engine.completion.engine import CompletionEngine
    from cache_engine.completion.settings import CompletionSettings
    from cache_engine.model.loading import load_model
    from cache_engine.text.text_change import line_suffix

    engine = CompletionEngine(
        load_model(str(model)),
        CompletionSettings(max_new_tokens=16, mid_line="always", heal_tokens=False),
    )
    engine.open_document(uri(0), text, 1, "python")
    # The inline item keeps the rest of the cursor's line after the completion.
    return engine.complete(uri(0), offset).text + line_suffix(text, offset)


@pytest.mark.asyncio
async def test_memory_budget_evicts_and_evicted_document_reencodes(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    texts = documents()
    server = await Server.start(tiny_model_dir, tmp_path / "server.log")
    client = Client(server)
    try:
        await server.initialize(max_new_tokens=MAX_NEW_TOKENS)
        pid = server.process.pid

        client.open(0, texts[0])
        line0, offset0 = cursor(texts[0])
        first = await client.complete(0, line0)
        assert first, "the tiny model produced no completion"
        one = (await client.stats())[uri(0)]["cache_bytes"]
        assert one > 0
        budget = KEPT * one
        rss_first = vm_rss(pid)
        server.send(
            {
                "method": "workspace/didChangeConfiguration",
                "params": {"settings": {"pieLsp": {"memoryBudgetMb": budget / MIB}}},
            }
        )

        for index in range(1, DOCUMENTS):
            client.open(index, texts[index])
            await client.complete(index, cursor(texts[index])[0])

        # Server.initialize opened file:///a.py too; it holds no cache (never completed).
        documents_stats = {
            key: values for key, values in (await client.stats()).items() if key != "file:///a.py"
        }
        rss_after = vm_rss(pid)
        evictions = sum(s["evictions"] for s in documents_stats.values())
        cached = sum(s["cache_bytes"] for s in documents_stats.values())
        tokens = [s["tokens_cached"] for s in documents_stats.values() if s["tokens_cached"]]
        print(
            f"one document {one} bytes ({tokens[0]} tokens), budget {budget} bytes, "
            f"cached {cached} bytes in {len(tokens)} documents, evictions {evictions}, "
            f"VmRSS after first completion {rss_first / MIB:.1f} MiB, "
            f"after {DOCUMENTS} documents {rss_after / MIB:.1f} MiB"
        )
        assert len(documents_stats) == DOCUMENTS
        assert all(s["completions"] == 1 for s in documents_stats.values())
        assert evictions > 0
        assert cached <= budget
        assert rss_after <= rss_first + budget + 200 * MIB

        evicted = documents_stats[uri(0)]
        assert evicted["evictions"] == 1
        assert evicted["cache_bytes"] == evicted["tokens_cached"] == 0
        # Same text and cursor: an empty `typed` prefix means no forward-typing shortcut, so
        # the model runs again on a cache encoded afresh.
        again = await client.complete(0, line0)
        revived = (await client.stats())[uri(0)]
        assert revived["completions"] == 2
        assert revived["last_edit"]["tokens_reused"] == 0
        assert revived["last_edit"]["tokens_encoded"] == revived["tokens_cached"] > 0
        assert revived["cache_bytes"] > 0
        assert again == first

        assert (await client.request("shutdown", None)) is None
        server.send({"method": "exit"})
        assert await server.exit_code() == 0
    finally:
        await server.kill()
    assert again == fresh_completion(tiny_model_dir, texts[0], offset0)
