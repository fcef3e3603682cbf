"""A real VS Code (code-server) with the packaged extension, driven through headless Chromium.

Everything waits on the editor's state in the DOM, never on fixed sleeps: on two busy cores
the same step takes 0.1 s one time and 5 s the next.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import REPO

T = TypeVar("T")
GUARD = 120  # seconds: a hang guard, not a latency target
EDITOR = ".editor-instance .monaco-editor"
GHOST = ".ghost-text-decoration, .ghost-text"
ERROR_TOAST = ".notifications-toasts .notification-toast .codicon-error"


def install_rig() -> Path:
    """scripts/vscode-rig (idempotent) and the path it prints."""
    done = subprocess.run(
        [str(REPO / "scripts" / "vscode-rig")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/vscode-rig failed:\n{done.stderr[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def package_extension(rig: Path) -> Path:
    """npm ci and `npm run package` in editor_configs/vscode: the .vsix a user installs."""
    folder = REPO / "editor_configs" / "vscode"
    env = {**os.environ, "PATH": f"{rig / 'node' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    for command in (["npm", "ci", "--no-audit", "--no-fund"], ["npm", "run", "package"]):
        done = subprocess.run(
            command, cwd=folder, env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr}")
    return folder / "pie-lsp.vsix"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class CodeServer:
    """code-server in its own process group, with its own config, user data and extensions."""

    def __init__(
        self, rig: Path, home: Path, vsix: Path, settings: dict[str, Any], server_log: Path
    ):
        self.rig = rig
        self.home = home
        self.server_log = server_log  # pie-lsp's --log-file
        self.port = free_port()
        self.workspace = home / "workspace"
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.user_settings = home / "user-data" / "User" / "settings.json"
        self.user_settings.parent.mkdir(parents=True, exist_ok=True)
        self.write_settings(settings)
        (home / "config.yaml").write_text(
            f"bind-addr: 127.0.0.1:{self.port}\nauth: none\ncert: false\n"
        )
        self._run(["--install-extension", str(vsix)], check=True)
        self.process: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        entry = self.rig / "code-server" / "node_modules" / "code-server" / "out" / "node"
        return [
            str(self.rig / "node" / "bin" / "node"),
            str(entry / "entry.js"),
            "--config",
            str(self.home / "config.yaml"),
            "--user-data-dir",
            str(self.home / "user-data"),
            "--extensions-dir",
            str(self.home / "extensions"),
            "--disable-telemetry",
            "--disable-update-check",
        ]

    def _run(self, arguments: list[str], *, check: bool) -> None:
        subprocess.run(self._command() + arguments, capture_output=True, check=check)

    def write_settings(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.user_settings.write_text(json.dumps(settings, indent=2))

    def start(self) -> None:
        log = (self.home / "code-server.log").open("wb")
        self.process = subprocess.Popen(
            [*self._command(), str(self.workspace)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
        )
        wait_until(self._listening, 60, "code-server to listen")

    def _listening(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/?folder={self.workspace}"

    def stop(self) -> None:
        # The whole group: an orphaned extension host would outlive code-server.
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def wait_until(condition: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def squeeze(text: str) -> str:
    """Text without whitespace: ghost text is drawn with non-breaking spaces and wrapped."""
    return re.sub(r"\s", "", text.replace("\xa0", " "))


class Workbench:
    """One browser page on the workbench, with the steps a user takes."""

    def __init__(self, page: Any, server: CodeServer):
        self.page = page
        self.server = server

    def load(self) -> None:
        self.page.goto(self.server.url)
        self.page.wait_for_selector(
            ".monaco-workbench .explorer-folders-view", timeout=GUARD * 1000
        )

    def open(self, name: str) -> None:
        """Open a workspace file from the explorer, as a pinned editor, and focus it."""
        self.page.locator(".explorer-folders-view .monaco-list-row", has_text=name).first.dblclick()
        self.page.wait_for_selector(
            f".tabs-container .tab.active:has-text('{name}')", timeout=GUARD * 1000
        )
        self.page.wait_for_selector(f"{EDITOR} .view-lines", timeout=GUARD * 1000)
        self.page.locator(f"{EDITOR} .view-lines").first.click()

    def editor_focus(self) -> None:
        self.page.locator(f"{EDITOR} textarea").first.focus()

    def command(self, title: str) -> None:
        self.page.keyboard.press("Control+Shift+P")
        self.page.wait_for_selector(".quick-input-widget input", timeout=GUARD * 1000)
        self.page.keyboard.type(title)
        self.page.wait_for_selector(
            f".quick-input-list .monaco-list-row:has-text('{title}')", timeout=GUARD * 1000
        )
        self.page.keyboard.press("Enter")

    def go_to(self, line: int, column: int | None = None) -> None:
        self.page.keyboard.press("Control+g")
        self.page.wait_for_selector(".quick-input-widget input", timeout=GUARD * 1000)
        self.page.keyboard.type(f"{line}:{column}" if column else str(line))
        self.page.keyboard.press("Enter")
        if column is None:
            self.page.keyboard.press("End")

    def ready(self) -> None:
        self.page.wait_for_selector(
            ".statusbar-item:has-text('pie-lsp') .codicon-check", timeout=GUARD * 1000
        )

    def ghost_text(self) -> str | None:
        """The ghost text drawn now, squeezed (see `squeeze`), or None when there is none."""
        # The first line is a decoration in the cursor's line; the others are a view zone
        # below it, which comes first in the DOM.
        first = self.page.locator(".ghost-text-decoration").all_inner_texts()
        below = self.page.locator(".ghost-text:not(.ghost-text-decoration)").all_inner_texts()
        parts = first + below
        return squeeze("".join(parts)) if parts else None

    def ghost_first_line(self) -> str:
        """The ghost text's first line as drawn, spaces included."""
        return "".join(self.page.locator(".ghost-text-decoration").all_inner_texts()).replace(
            "\xa0", " "
        )

    def wait_ghost(self, timeout: float = GUARD) -> str:
        """The ghost text once two reads agree: its view zone and its first-line decoration
        are drawn apart, and a read between them misses a part."""

        def settled() -> str | None:
            text = self.ghost_text()
            return text if text is not None and text == self.ghost_text() else None

        return wait_until(settled, timeout, "ghost text")

    def accept(self) -> None:
        """Tab, then wait for the cursor to move past the inserted text. The next suggestion
        may follow at once and may even read the same as this one (code repeats), so a change
        of ghost text does not say the first was taken."""
        before = self.cursor()
        self.page.keyboard.press("Tab")
        wait_until(lambda: self.cursor() != before, GUARD, "the ghost text to be accepted")

    def error_toasts(self) -> list[str]:
        return self.page.locator(".notifications-toasts .notification-toast").all_inner_texts()

    def save(self) -> None:
        self.page.wait_for_selector(".tabs-container .tab.active.dirty", timeout=GUARD * 1000)
        self.page.keyboard.press("Control+s")
        self.page.wait_for_selector(".tabs-container .tab.active:not(.dirty)", timeout=GUARD * 1000)

    def pie_log(self) -> str:
        return self.server.server_log.read_text() if self.server.server_log.exists() else ""

    def cursor(self) -> tuple[int, int]:
        """The cursor as an LSP position (0-based line and character), from the status bar."""
        text = self.page.locator("#status\\.editor\\.selection").first.inner_text()
        found = re.search(r"Ln (\d+), Col (\d+)", text)
        if found is None:
            raise AssertionError(f"no cursor position in the status bar item {text!r}")
        return int(found[1]) - 1, int(found[2]) - 1

    def answer_at(self, position: tuple[int, int]) -> tuple[str, str] | None:
        """The server's last answer logged at `position`: (the suggestion's repr, the reason),
        or None when it has logged none there."""
        line, character = position
        answer = re.compile(rf"completion {line}:{character} in \S+: ('.*'|\".*\") \(\w+, ([^,]+)")
        found = answer.findall(self.pie_log())
        return found[-1] if found else None

    def status(self) -> str:
        return self.page.locator(".statusbar-item:has-text('pie-lsp')").first.inner_text()
