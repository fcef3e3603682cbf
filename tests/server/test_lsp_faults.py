"""Wire faults over a raw subprocess: a client that vanishes, broken frames, shutdown mid-work.

Exit codes follow the LSP spec: 0 after `shutdown` then `exit`, 1 for `exit` without `shutdown`,
and 0 when the client simply closes its end (nothing went wrong on the server's side). pygls 2.1
computes the spec's code but raises SystemExit inside asyncio.run, which its own start_io
catches, so on its own the process always ended with 0; pie-lsp records the code itself in its
`exit` handler and leaves with it (lsp_server/__main__.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

GUARD = 60  # seconds: a hang guard, not a latency target

TEXT = "".join(f"def f_{i}(x):\n    return x + {i}\n\n" for i in range(50))


class Server:
    """pie-lsp spoken to in hand-written Content-Length frames."""

    def __init__(self, process: asyncio.subprocess.Process, log_file: Path | None):
        self.process = process
        self.log_file = log_file

    @classmethod
    async def start(
        cls,
        model: Path,
        log_file: Path | None,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        arguments: tuple[str, ...] = (),
        stderr: int = asyncio.subprocess.DEVNULL,
    ) -> Server:
        if env is None:
            env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lsp_server",
            "--model",
            str(model),
            *(("--log-file", str(log_file)) if log_file is not None else ()),
            *arguments,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=cwd,
        )
        return cls(process, log_file)

    def write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        self.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    async def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        length = 0
        while True:
            line = await self.process.stdout.readline()
            if not line:
                raise EOFError("server closed its output")
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
            if line in (b"\r\n", b"\n"):
                break
        return json.loads(await self.process.stdout.readexactly(length))

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async def scan() -> dict[str, Any]:
            while not predicate(message := await self.read()):
                pass
            return message

        return await asyncio.wait_for(scan(), GUARD)

    async def request(self, request_id: int, method: str, params: Any = None) -> dict[str, Any]:
        self.send({"id": request_id, "method": method, "params": params})
        return await self.wait_for(lambda m: m.get("id") == request_id)

    async def stats(self, request_id: int) -> dict[str, Any]:
        answer = await self.request(
            request_id, "workspace/executeCommand", {"command": "pie-lsp.stats", "arguments": []}
        )
        return answer["result"]

    async def initialize(self, max_new_tokens: int = 16) -> None:
        # Completions at line starts before code: the mid-line policy is not what is tested.
        # Healed output of random weights is often blank; healing is tested on its own.
        options = {
            "pieLsp": {
                "debounceMs": 0,
                "maxNewTokens": max_new_tokens,
                "midLine": "always",
                "healTokens": False,
            }
        }
        params = {"processId": None, "rootUri": None, "capabilities": {}}
        await self.request(1, "initialize", {**params, "initializationOptions": options})
        self.send({"method": "initialized", "params": {}})
        for attempt in range(GUARD * 5):
            if (await self.stats(10_000 + attempt))["modelState"] == "ready":
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail("the model did not load")
        document = {"uri": "file:///a.py", "languageId": "python", "version": 1, "text": TEXT}
        self.send({"method": "textDocument/didOpen", "params": {"textDocument": document}})

    def complete(self, request_id: int, context: dict[str, Any] | None = None) -> None:
        position = {"line": 3, "character": 0}
        params = {"textDocument": {"uri": "file:///a.py"}, "position": position}
        self.send(
            {
                "id": request_id,
                "method": "textDocument/inlineCompletion",
                "params": {**params, "context": context or {"triggerKind": 2}},
            }
        )

    async def exit_code(self) -> int:
        """The process's exit code; the guard fails the test (and kills it) if it hangs."""
        try:
            return await asyncio.wait_for(self.process.wait(), GUARD)
        except TimeoutError:
            pytest.fail("pie-lsp did not exit by itself")

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@pytest.mark.asyncio
async def test_client_disconnects_mid_request(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = await Server.start(tiny_model_dir, tmp_path / "server.log")
    try:
        await server.initialize(max_new_tokens=2000)
        server.complete(2)
        await asyncio.sleep(0.2)  # let the generation start on the worker thread
        assert server.process.stdin is not None
        server.process.stdin.close()
        # The worker thread is told to stop: the interpreter must not wait out 2000 tokens.
        assert await server.exit_code() == 0
    finally:
        await server.kill()


@pytest.mark.asyncio
async def test_broken_frames_are_logged_and_serving_goes_on(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    server = await Server.start(tiny_model_dir, tmp_path / "server.log")
    try:
        await server.initialize()
        # A header that is not a number: the body that follows cannot be framed. Without
        # resynchronising, every later header would be glued to the body before it.
        server.write(b'Content-Length: abc\r\n\r\n{"jsonrpc": "2.0", "id": 7}')
        assert (await server.stats(2))["modelState"] == "ready"
        # Valid JSON that is not an object, then a too-short length cutting a frame in two.
        for body in (b"[1, 2, 3]", b"42", b'"text"', b"null"):
            server.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        server.write(b'Content-Length: 5\r\n\r\n{"jsonrpc": "2.0", "id": 8, "method": "x"}')
        assert (await server.stats(3))["modelState"] == "ready"
        server.complete(4)
        answer = await server.wait_for(lambda m: m.get("id") == 4)
        assert isinstance(answer["result"], list)
        assert (await server.request(5, "shutdown"))["result"] is None
        server.send({"method": "exit"})
        assert await server.exit_code() == 0
        log = server.log_file.read_text()
        assert "malformed LSP header ignored: b'Content-Length: abc" in log
        assert "malformed LSP framing" in log
        assert log.count("Unable to handle message") >= 5  # 4 non-objects and the cut frame
    finally:
        await server.kill()


@pytest.mark.asyncio
async def test_shutdown_during_generation_then_exit(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = await Server.start(tiny_model_dir, tmp_path / "server.log")
    try:
        await server.initialize(max_new_tokens=2000)
        server.complete(2)
        await asyncio.sleep(0.2)
        assert (await server.request(3, "shutdown"))["result"] is None
        server.send({"method": "exit"})
        assert await server.exit_code() == 0
    finally:
        await server.kill()


@pytest.mark.asyncio
async def test_exit_without_shutdown_is_code_1(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = await Server.start(tiny_model_dir, tmp_path / "server.log")
    try:
        await server.initialize()
        server.send({"method": "exit"})
        assert await server.exit_code() == 1
    finally:
        await server.kill()


@pytest.mark.asyncio
async def test_vscode_launch_flag_and_array_range(tiny_model_dir: Path, tmp_path: Path) -> None:
    """vscode-languageclient appends --stdio, and version 9 sends selectedCompletionInfo's
    range as a JSON array: both must still give an answer, not a crash or Invalid Params."""
    server = await Server.start(tiny_model_dir, tmp_path / "server.log", arguments=("--stdio",))
    try:
        await server.initialize()
        start, end = {"line": 3, "character": 0}, {"line": 3, "character": 0}
        for request_id, selected_range in ((2, [start, end]), (3, {"start": start, "end": end})):
            selected = {"range": selected_range, "text": ""}
            server.complete(request_id, {"triggerKind": 2, "selectedCompletionInfo": selected})
            answer = await server.wait_for(lambda m, i=request_id: m.get("id") == i)
            assert "error" not in answer, answer
            assert isinstance(answer["result"], list)
        assert (await server.request(4, "shutdown"))["result"] is None
        server.send({"method": "exit"})
        assert await server.exit_code() == 0
    finally:
        await server.kill()


def test_stdio_and_tcp_exclude_each_other() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "lsp_server", "--stdio", "--tcp"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert completed.returncode == 1
    assert "--stdio and --tcp" in completed.stderr


def test_cuda_graphs_on_a_cpu_device_is_refused_before_loading() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "lsp_server", "--cuda-graphs", "--device", "cpu"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert completed.returncode == 1
    assert "--cuda-graphs needs a CUDA --device, not 'cpu'" in completed.stderr


async def read_stderr(server: Server) -> str:
    assert server.process.stderr is not None
    return (await asyncio.wait_for(server.process.stderr.read(), GUARD)).decode()


@pytest.mark.asyncio
async def test_stderr_stays_empty_in_normal_operation(tiny_model_dir: Path) -> None:
    """Editors show every stderr line as an error: no log, warnings or progress bars there."""
    server = await Server.start(tiny_model_dir, None, stderr=asyncio.subprocess.PIPE)
    try:
        await server.initialize()
        server.complete(2)
        await server.wait_for(lambda m: m.get("id") == 2)
        assert (await server.request(3, "shutdown"))["result"] is None
        server.send({"method": "exit"})
        assert await server.exit_code() == 0
        assert await read_stderr(server) == ""
    finally:
        await server.kill()


@pytest.mark.asyncio
async def test_client_gone_while_the_model_loads_leaves_no_traceback(
    tiny_model_dir: Path,
) -> None:
    server = await Server.start(tiny_model_dir, None, stderr=asyncio.subprocess.PIPE)
    try:
        capabilities = {"window": {"workDoneProgress": True}}
        params = {"processId": None, "rootUri": None, "capabilities": capabilities}
        server.send({"id": 1, "method": "initialize", "params": params})
        server.send({"method": "initialized", "params": {}})
        # Answer the progress-token request, so the load reports progress, then vanish.
        message = await server.wait_for(
            lambda m: m.get("method") == "window/workDoneProgress/create"
        )
        server.send({"id": message["id"], "result": None})
        assert server.process.stdin is not None and server.process.stdout is not None
        server.process.stdin.close()
        server.process._transport.get_pipe_transport(1).close()  # the client stops reading
        assert await server.exit_code() == 0
        errors = await read_stderr(server)
        assert "Traceback" not in errors and "Error" not in errors, errors
    finally:
        await server.kill()


@pytest.mark.asyncio
async def test_client_that_stops_reading_before_the_shutdown_answer_leaves_a_quiet_log(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Neovim's :qa! after an editing session: shutdown and exit sent, the pipe closed unread.
    log_file = tmp_path / "server.log"
    server = await Server.start(tiny_model_dir, log_file, stderr=asyncio.subprocess.PIPE)
    try:
        await server.initialize()
        server.complete(2)
        await server.wait_for(lambda m: m.get("id") == 2)
        assert server.process.stdin is not None
        server.process._transport.get_pipe_transport(1).close()  # the client stops reading
        # The transport closes its end of the pipe in a callback on the next turn of the loop:
        # let it run, or under load the server could answer into the still-open pipe.
        await asyncio.sleep(0)
        server.send({"id": 3, "method": "shutdown"})
        server.send({"method": "exit"})
        server.process.stdin.close()
        assert await server.exit_code() == 0
        assert await read_stderr(server) == ""
        log = log_file.read_text()
        assert "Traceback" not in log and " ERROR " not in log, log
        assert "the client closed the server's output" in log
    finally:
        await server.kill()
