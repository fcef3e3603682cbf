"""pie-lsp stays on the machine: no network connection, and no file written but its log.

Both tests drive a raw server subprocess (tests/test_lsp_faults.py's `Server`) with the tiny
random-weight model folder through a whole session: initialize, wait for the model, open,
inline completion, close, shutdown, exit.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.server.test_lsp_faults import Server

# Loaded at interpreter start-up through PYTHONPATH: every AF_INET/AF_INET6 connection attempt
# is written down and refused. AF_UNIX stays allowed (asyncio's self-pipe is a socketpair).
SITECUSTOMIZE = textwrap.dedent(
    """
    import os
    import socket

    _RECORD = os.environ["PIE_LSP_TEST_NET_RECORD"]
    _INET = (socket.AF_INET, socket.AF_INET6)

    with open(os.environ["PIE_LSP_TEST_NET_MARKER"], "w") as marker:
        marker.write(str(os.getpid()))


    def _refuse(address):
        with open(_RECORD, "a") as record:
            record.write(repr(address) + "\\n")
        raise OSError("network access refused by the test")


    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex


    def connect(self, address):
        if self.family in _INET:
            _refuse(address)
        return _connect(self, address)


    def connect_ex(self, address):
        if self.family in _INET:
            _refuse(address)
        return _connect_ex(self, address)


    def create_connection(address, *args, **kwargs):
        _refuse(address)


    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.create_connection = create_connection
    """
)


async def session(server: Server) -> None:
    """initialize, model ready, open a.py, one inline completion, close, shutdown, exit."""
    await server.initialize()
    server.complete(2)
    answer = await server.wait_for(lambda m: m.get("id") == 2)
    assert isinstance(answer["result"], list)
    assert answer["result"], "the tiny model produced no completion"
    server.send(
        {"method": "textDocument/didClose", "params": {"textDocument": {"uri": "file:///a.py"}}}
    )
    assert (await server.request(3, "shutdown"))["result"] is None
    server.send({"method": "exit"})
    assert await server.exit_code() == 0


@pytest.mark.asyncio
async def test_no_network_connection(tiny_model_dir: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    record = tmp_path / "connections.txt"
    marker = tmp_path / "sitecustomize-loaded"
    record.touch()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
        "HF_HUB_OFFLINE": "1",
        "PIE_LSP_TEST_NET_RECORD": str(record),
        "PIE_LSP_TEST_NET_MARKER": str(marker),
    }
    server = await Server.start(tiny_model_dir, tmp_path / "server.log", env=env)
    try:
        await session(server)
    finally:
        await server.kill()
    assert marker.exists(), "the socket-recording sitecustomize was not loaded"
    assert marker.read_text() == str(server.process.pid)
    assert record.read_text() == "", f"network connections attempted:\n{record.read_text()}"


@pytest.mark.asyncio
async def test_writes_nothing_but_its_log(tiny_model_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": str(home),
        "TMPDIR": str(home),
        "XDG_CACHE_HOME": str(home),
        "HF_HOME": str(home),
    }
    log_file = home / "server.log"
    server = await Server.start(tiny_model_dir, log_file, env=env, cwd=home)
    try:
        await session(server)
    finally:
        await server.kill()
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    # Besides its log, the compiled decode step's build cache (kernels/llama_decode_cpu.py).
    kernels = [w for w in written if w.startswith("pie-lsp")]
    assert kernels[:2] == ["pie-lsp", "pie-lsp/kernels"]
    assert all(
        re.fullmatch(r"pie-lsp/kernels/llama_decode_cpu-[0-9a-f]{16}\.so", k) for k in kernels[2:]
    )
    assert len(kernels) == 3
    assert [w for w in written if not w.startswith("pie-lsp")] == ["server.log"]
    assert log_file.stat().st_size > 0
