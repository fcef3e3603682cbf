"""pie-lsp fed raw bytes: requests before initialize, malformed frames, a missing model."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import pytest

from tests.conftest import REPO


class RawSession:
    """A server process spoken to in raw LSP frames."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self.received: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, *arguments: str) -> RawSession:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lsp_server",
            *arguments,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
        )
        return cls(process)

    def send_bytes(self, body: bytes, length: int | None = None) -> None:
        assert self.process.stdin is not None
        header = f"Content-Length: {len(body) if length is None else length}\r\n\r\n".encode()
        self.process.stdin.write(header + body)

    def send(self, message: dict[str, Any]) -> None:
        self.send_bytes(json.dumps({"jsonrpc": "2.0", **message}).encode())

    async def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        length = 0
        while True:
            line = (await self.process.stdout.readline()).decode()
            if not line:
                raise EOFError("server closed its output")
            if line.lower().startswith("content-length:"):
                length = int(line.split(":")[1])
            if line in ("\r\n", "\n"):
                break
        message = json.loads(await self.process.stdout.readexactly(length))
        self.received.append(message)
        return message

    async def wait_for(self, predicate, timeout: float = 60) -> dict[str, Any]:
        async def scan() -> dict[str, Any]:
            while True:
                message = await self.read()
                if predicate(message):
                    return message

        return await asyncio.wait_for(scan(), timeout)

    async def close(self) -> int:
        self.send({"id": 999, "method": "shutdown"})
        await self.wait_for(lambda m: m.get("id") == 999)
        self.send({"method": "exit"})
        return await asyncio.wait_for(self.process.wait(), 30)


def inline_request(request_id: int, uri: str) -> dict[str, Any]:
    return {
        "id": request_id,
        "method": "textDocument/inlineCompletion",
        "params": {
            "textDocument": {"uri": uri},
            "position": {"line": 0, "character": 0},
            "context": {"triggerKind": 1},
        },
    }


@pytest.mark.asyncio
async def test_garbage_and_early_requests_then_missing_model(tmp_path) -> None:
    missing = tmp_path / "no-such-model"
    session = await RawSession.start("--model", str(missing))
    try:
        session.send(inline_request(1, "file:///early.py"))
        early = await session.wait_for(lambda m: m.get("id") == 1)
        assert early.get("result") in (None, []) or "error" in early
        session.send_bytes(b"{this is not json")  # malformed body
        session.send_bytes(
            b'{"jsonrpc": "2.0", "id": 5, "method": "textDocument/inlineCompletion"}'
        )
        session.send(
            {
                "id": 2,
                "method": "initialize",
                "params": {"processId": None, "rootUri": None, "capabilities": {}},
            }
        )
        initialized = await session.wait_for(lambda m: m.get("id") == 2)
        capabilities = initialized["result"]["capabilities"]
        assert "inlineCompletionProvider" in capabilities
        assert capabilities["completionProvider"]["triggerCharacters"]
        assert "pie-lsp.stats" in capabilities["executeCommandProvider"]["commands"]
        session.send({"method": "initialized", "params": {}})
        shown = await session.wait_for(lambda m: m.get("method") == "window/showMessage")
        assert str(missing) in shown["params"]["message"]
        assert "does not exist" in shown["params"]["message"]
        session.send(
            {
                "method": "textDocument/didOpen",
                "params": {
                    "textDocument": {
                        "uri": "file:///a.py",
                        "languageId": "python",
                        "version": 1,
                        "text": "x = 1\n",
                    }
                },
            }
        )
        session.send(inline_request(3, "file:///a.py"))
        answer = await session.wait_for(lambda m: m.get("id") == 3)
        assert answer["result"] == []
        assert await session.close() == 0
    finally:
        if session.process.returncode is None:
            session.process.kill()
            await session.process.wait()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.asyncio
async def test_tcp_mode_and_non_loopback_warning(tmp_path) -> None:
    port = free_port()
    log_file = tmp_path / "server.log"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lsp_server",
        "--tcp",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--model",
        str(tmp_path / "absent"),
        "--log-file",
        str(log_file),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        for _ in range(100):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail(f"pie-lsp did not listen on port {port}")
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"processId": None, "rootUri": None, "capabilities": {}},
            }
        ).encode()
        writer.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        header = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = int(header.split(b":")[1].split(b"\r\n")[0])
        response = json.loads(await reader.readexactly(length))
        assert "inlineCompletionProvider" in response["result"]["capabilities"]
        writer.close()
        assert "not a loopback address" in log_file.read_text()
    finally:
        process.kill()
        await process.wait()
