"""The shipped extension in a real VS Code (code-server 4.139.1 = VS Code 1.139.1).

The rig (node 24, code-server, Chromium, Playwright) comes from scripts/vscode-rig, which
skips what is already installed; the extension is packaged with `npm run package` and
installed from its .vsix; the only setting changed is the server's path. Each test types into
real standard-library files and reads what the editor draws.

    python -m pytest -m vscode              # just these
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.vscode.workbench import (
    EDITOR,
    GUARD,
    CodeServer,
    Workbench,
    install_rig,
    package_extension,
    squeeze,
    wait_until,
)

pytestmark = pytest.mark.vscode
STDLIB = Path(sysconfig.get_paths()["stdlib"])
FILES = {
    "decoder.py": "json/decoder.py",
    "encoder.py": "json/encoder.py",
    "textwrap.py": "textwrap.py",
}


def server_settings(
    log: Path, extra: dict[str, object] | None = None, *, gate_open: bool = True
) -> dict[str, object]:
    venv_server = REPO / ".venv" / "bin" / "pie-lsp"
    command = [str(venv_server)] if venv_server.exists() else [sys.executable, "-m", "lsp_server"]
    return {
        "security.workspace.trust.enabled": False,
        "workbench.startupEditor": "none",
        "workbench.tips.enabled": False,
        "workbench.secondarySideBar.defaultVisibility": "hidden",
        "chat.disableAIFeatures": True,
        "telemetry.telemetryLevel": "off",
        "extensions.autoUpdate": False,
        "update.mode": "none",
        "editor.inlineSuggest.enabled": True,
        "files.autoSave": "off",  # the tests save, then read the file
        "pieLspServer.command": command[0],
        "pieLspServer.args": [*command[1:], "--log-file", str(log), "--log-level", "DEBUG"],
        # The places typed at are chosen for the editor's sake, not the model's confidence:
        # the gate is measured in benchmarks/suggestion_quality.py.
        **({"pieLsp.minConfidence": 0, "pieLsp.minTokenProb": 0} if gate_open else {}),
        **(extra or {}),
    }


@pytest.fixture(scope="module")
def code_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CodeServer]:
    try:
        rig = install_rig()
        vsix = package_extension(rig)
        import playwright  # noqa: F401
    except (RuntimeError, ImportError, FileNotFoundError) as error:
        if os.environ.get("PIE_LSP_REQUIRE_VSCODE"):
            raise
        pytest.skip(f"no VS Code rig here: {error}")
    home = tmp_path_factory.mktemp("code-server")
    log = home / "pie-lsp.log"
    server = CodeServer(rig, home, vsix, server_settings(log), log)
    for name, relative in FILES.items():
        shutil.copy(STDLIB / relative, server.workspace / name)
    # Documents the model does not know: they must never reach the server.
    (server.workspace / "notes.md").write_text("# Notes\n\nSome text.\n")
    (server.workspace / "data.json").write_text('{"key": [1, 2, 3]}\n')
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def workbench(code_server: CodeServer) -> Iterator[Workbench]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        bench = Workbench(page, code_server)
        bench.load()
        yield bench
        page.screenshot(path=str(code_server.home / "last.png"))
        browser.close()


def server_log(code_server: CodeServer) -> str:
    log = code_server.server_log
    return log.read_text() if log.exists() else ""


def test_server_starts_and_ghost_text_appears_on_a_real_file(workbench: Workbench) -> None:
    workbench.open("decoder.py")
    workbench.ready()  # the status bar went from "loading model" to ready: the server runs
    workbench.page.keyboard.press("Control+End")
    workbench.page.keyboard.press("Enter")
    workbench.page.keyboard.type("def scan(s, idx):\n", delay=100)
    assert workbench.wait_ghost()
    assert "ms" in workbench.status()  # the last completion's latency
    assert not workbench.error_toasts()


def test_tab_inserts_exactly_what_was_shown(workbench: Workbench, code_server: CodeServer) -> None:
    workbench.open("encoder.py")
    workbench.ready()
    path = code_server.workspace / "encoder.py"
    before = path.read_text()
    workbench.page.keyboard.press("Control+End")
    workbench.page.keyboard.type("\n\ndef encode_all(items):\n", delay=100)
    typed = "\n\ndef encode_all(items):\n    "  # VS Code indents the new line
    shown = workbench.wait_ghost()
    workbench.accept()
    workbench.save()
    after = path.read_text()
    assert after.startswith(before)
    inserted = after[len(before) :]
    assert squeeze(inserted) == squeeze(typed) + shown


def test_mid_line_shows_what_tab_inserts_and_nothing_before_code(
    workbench: Workbench, code_server: CodeServer
) -> None:
    workbench.open("textwrap.py")
    workbench.ready()
    path = code_server.workspace / "textwrap.py"
    lines = path.read_text().split("\n")
    # Before real code on the line: nothing is offered.
    target = next(i for i, line in enumerate(lines) if "self.width = width" in line)
    workbench.go_to(target + 1, lines[target].index("width") + 1)
    # Read before typing: the server may answer within milliseconds of the key.
    log_size = len(server_log(code_server))
    workbench.page.keyboard.type("x", delay=100)
    wait_until(
        lambda: (
            "code after the cursor" in server_log(code_server)[log_size:]
            or "completion" in server_log(code_server)[log_size:]
        ),
        GUARD,
        "the request",
    )
    assert workbench.ghost_text() is None
    workbench.page.keyboard.press("Backspace")
    # Before a closing bracket: offered, and Tab gives the line that was drawn. Whether the
    # model has something to say at a given call is its business: try a few.
    shown = None
    workbench.page.keyboard.press("Control+End")
    workbench.page.keyboard.type("\n\ndef check(text, width):", delay=100)
    cursor = (0, 0)
    for opening in ("if isinstance(", "print(", "lines = wrap(", "max("):
        workbench.page.keyboard.press("Control+End")
        # VS Code indents the new line and closes the bracket.
        workbench.page.keyboard.type(f"\n{opening}", delay=100)
        # While the bracket is typed VS Code may keep an older item on screen; what Tab takes
        # is the answer for where the cursor is now (a clean-clone run read the old item's
        # line, then Tab took the new one). Wait for that answer, and for it to be drawn.
        cursor = workbench.cursor()
        # A quoted answer, or one from the text typed along (the only kind logged unquoted).
        answered = re.compile(
            rf"completion {cursor[0]}:{cursor[1]} in \S+/textwrap\.py: ('|\"|typed ahead)"
        )
        wait_until(
            lambda answered=answered: answered.search(server_log(code_server)),
            GUARD,
            "the answer at the cursor",
        )
        answer = workbench.answer_at(cursor)
        if answer is not None and not ast.literal_eval(answer[0]):
            continue  # nothing to say here
        expected = squeeze(ast.literal_eval(answer[0])) if answer is not None else None
        try:

            def drawn_answer(expected: str | None = expected) -> str | None:
                text = workbench.wait_ghost(timeout=15)
                return text if expected is None or text == expected else None

            shown = wait_until(drawn_answer, 30, f"the ghost text {expected!r}")
            break
        except TimeoutError:
            continue
    assert shown, "no ghost text before a closing bracket at any of the calls tried"
    # A suggestion of several lines draws its first line in the cursor's line and the rest in
    # a view zone below: the cursor's line holds only the first.
    first = squeeze(workbench.ghost_first_line())
    # The line as drawn: VS Code renders the ghost text inside the line's own DOM node, a moment
    # after its decoration can be read (a clean-clone run read the line between the two).
    line = workbench.page.locator(f"{EDITOR} .view-lines .view-line", has_text=opening.strip())

    def drawn_with_ghost() -> str | None:
        text = line.last.inner_text().replace("\xa0", " ")
        remaining = iter(squeeze(text)[len(squeeze(opening)) :])
        return text if all(char in remaining for char in first) else None

    drawn = wait_until(drawn_with_ghost, GUARD, "the ghost text drawn in its line")
    cursor_line, _ = cursor
    workbench.accept()
    workbench.save()
    lines = path.read_text().split("\n")[cursor_line:]
    assert lines[0].rstrip() == drawn.rstrip()
    # VS Code draws a suggestion that ends past the closing bracket in pieces around it.
    remaining = iter(squeeze("".join(lines)))
    assert all(char in remaining for char in shown), (shown, lines)


def test_typing_along_a_suggestion_keeps_the_rest_visible(workbench: Workbench) -> None:
    workbench.open("decoder.py")
    workbench.ready()
    workbench.page.keyboard.press("Control+End")
    workbench.page.keyboard.type("\n\ndef parse_all(s):\n    return ", delay=100)
    first_line = wait_until(workbench.ghost_first_line, GUARD, "a first line of ghost text")
    shown = workbench.wait_ghost()
    # Typing a bracket or quote makes VS Code insert its partner, which is other text than the
    # suggestion: type along what comes before the first of them.
    word = 0
    while word < len(first_line) and first_line[word] not in "([{'\"`":
        word += 1
    along = first_line[: min(6, word, len(first_line) - 1)]
    assert along, f"the suggestion is too short to type along: {first_line!r}"
    rest = shown
    for char in along:
        workbench.page.keyboard.type(char)
        rest = rest[len(squeeze(char)) :]
        # The rest stays visible: the same suggestion, shortened by what was typed.
        try:
            wait_until(lambda rest=rest: workbench.ghost_text() == rest, 30, f"ghost {rest!r}")
        except TimeoutError as error:
            raise AssertionError(
                f"after typing {char!r} of {first_line!r} the ghost text is "
                f"{workbench.ghost_text()!r}, not {rest!r}"
            ) from error
        workbench.page.wait_for_timeout(100)  # 10 characters a second


def test_three_tabs_only_python_reaches_the_server_and_no_error_toast(
    workbench: Workbench, code_server: CodeServer
) -> None:
    for name in [*FILES, "notes.md", "data.json"]:
        workbench.open(name)
    # Word suggestions open while inline completion is asked (selectedCompletionInfo).
    workbench.open("textwrap.py")
    workbench.page.keyboard.press("Control+End")
    workbench.page.keyboard.type("\nre", delay=100)
    workbench.page.keyboard.press("Control+Space")
    workbench.page.wait_for_timeout(1500)
    workbench.page.keyboard.press("Escape")
    log = server_log(code_server)
    assert "notes.md" not in log and "data.json" not in log
    assert "Invalid Params" not in log and "Traceback" not in log
    assert not [t for t in workbench.error_toasts() if "error" in t.lower()]


def test_stats_command_opens_json(workbench: Workbench) -> None:
    workbench.open("decoder.py")
    workbench.command("pie-lsp: Show cache statistics")
    workbench.page.wait_for_selector(".tabs-container .tab.active:has-text('pie-lsp statistics')")
    text = workbench.page.locator(f"{EDITOR} .view-lines").first.inner_text()
    assert '"modelState"' in text.replace("\xa0", " ")
    # A read-only document: closing it asks nothing (an untitled one asked to be saved).
    workbench.page.keyboard.press("Control+w")
    workbench.page.wait_for_selector(
        ".tabs-container .tab:has-text('pie-lsp statistics')", state="detached"
    )
    assert not workbench.page.locator(".monaco-dialog-box").count()


def test_a_setting_change_applies_without_restart(
    workbench: Workbench, code_server: CodeServer
) -> None:
    workbench.open("decoder.py")
    workbench.ready()
    starts = server_log(code_server).count("model default ready")
    page = workbench.page
    page.keyboard.press("Control+Comma")  # the Settings editor, as a user changes a setting
    page.wait_for_selector(
        ".settings-editor .suggest-input-container .monaco-editor.focused", timeout=GUARD * 1000
    )
    page.keyboard.type("pieLsp.maxNewTokens")
    page.wait_for_selector(".settings-editor :text('1 Setting Found')", timeout=GUARD * 1000)
    field = page.locator(".settings-editor .setting-item-number input").first

    def set_max_new_tokens(value: int) -> None:
        log_size = len(server_log(code_server))
        field.click()
        page.keyboard.press("Control+a")
        page.keyboard.type(str(value))
        page.keyboard.press("Tab")
        wait_until(
            lambda: f"max_new_tokens={value}," in server_log(code_server)[log_size:],
            GUARD,
            "the setting to arrive",
        )

    set_max_new_tokens(3)
    wait_until(
        lambda: '"pieLsp.maxNewTokens": 3' in code_server.user_settings.read_text(),
        GUARD,
        "VS Code to save the setting",
    )
    assert server_log(code_server).count("model default ready") == starts
    # The later tests read suggestions of the default length.
    set_max_new_tokens(64)
    page.keyboard.press("Escape")


def test_trigger_characters_bring_ghost_text_and_no_menu_item(
    workbench: Workbench, code_server: CodeServer
) -> None:
    """On "(" VS Code sends textDocument/completion and inlineCompletion at once. The menu gets
    nothing from pie-lsp (a client with inline completion would show the suggestion twice, and
    Enter would take it), and one generation answers the ghost text."""
    workbench.open("encoder.py")
    workbench.ready()
    before = len(server_log(code_server))
    workbench.page.keyboard.press("Control+End")
    workbench.page.keyboard.type("\nresult = dumps(", delay=100)
    line, character = workbench.cursor()
    at_bracket = re.compile(rf"completion {line}:{character} in \S+/encoder\.py: (.*)")

    def generated() -> list[str] | None:
        answers = at_bracket.findall(server_log(code_server)[before:])
        return [answer for answer in answers if answer[:1] in "'\""] or None

    wait_until(generated, GUARD, "the ghost text's generation at the bracket")
    workbench.page.wait_for_timeout(1000)
    menu = workbench.page.locator(".suggest-widget .monaco-list-row")
    assert not [row for row in menu.all_inner_texts() if "pie-lsp" in row]
    assert len(generated() or []) == 1
    workbench.page.keyboard.press("Escape")


def test_ghost_text_comes_once_the_model_is_ready_without_typing(
    workbench: Workbench, code_server: CodeServer
) -> None:
    workbench.open("textwrap.py")
    workbench.ready()
    workbench.page.keyboard.press("Control+End")
    workbench.page.keyboard.type("\n\ndef fill_all(texts, width):", delay=100)
    # A place where the model has something to say: try a few (VS Code indents each line).
    shown = None
    for line in ("\n", "result = []\n", "for text in texts:\n"):
        workbench.page.keyboard.type(line, delay=100)
        try:
            shown = workbench.wait_ghost(timeout=15)
            break
        except TimeoutError:
            continue
    assert shown, "no ghost text at any of the lines tried"
    line, character = workbench.cursor()
    workbench.page.keyboard.press("Escape")
    wait_until(lambda: workbench.ghost_text() is None, GUARD, "the ghost text to go")
    restarted_at = len(server_log(code_server))
    workbench.command("pie-lsp: Restart server")
    workbench.page.wait_for_selector(
        ".statusbar-item:has-text('loading model')", timeout=GUARD * 1000
    )
    workbench.editor_focus()
    workbench.ready()
    # Nobody typed: the extension asked again at the cursor when the model became ready.
    answer = re.compile(rf"completion {line}:{character} in \S+/textwrap\.py: ('.*'|\".*\") \(")
    found = wait_until(
        lambda: answer.findall(server_log(code_server)[restarted_at:]),
        GUARD,
        "a request at the cursor after the restart",
    )
    text = ast.literal_eval(found[-1])
    # What it answered is drawn (the model's answer, not the test's to choose, may be empty).
    if text:
        assert workbench.wait_ghost() == squeeze(text)


def test_the_output_channel_has_no_stderr_noise(workbench: Workbench) -> None:
    """No FutureWarning, progress bar or traceback reaches the pie-lsp output channel."""
    workbench.open("decoder.py")
    workbench.ready()
    workbench.command("Output: Show Output Channels...")
    workbench.page.wait_for_selector(
        ".quick-input-list .monaco-list-row:has-text('pie-lsp')", timeout=GUARD * 1000
    )
    workbench.page.keyboard.type("pie-lsp")
    workbench.page.keyboard.press("Enter")
    view = workbench.page.locator(".output-view .monaco-editor .view-lines").first
    wait_until(lambda: view.inner_text().strip(), GUARD, "the output channel")
    # The view draws only the lines in sight, and it follows the end: read it page by page
    # from the top.
    # Focused without a click: after the earlier tests the panel can be short enough that its
    # filter box covers the middle of the view, where a click would land.
    workbench.page.locator(".output-view .monaco-editor textarea").first.focus()
    workbench.page.keyboard.press("Control+Home")
    pages: list[str] = []
    for _ in range(100):
        page = view.inner_text().replace("\xa0", " ")
        if pages and page == pages[-1]:
            break
        pages.append(page)
        workbench.page.keyboard.press("PageDown")
        workbench.page.wait_for_timeout(200)  # the view redraws after the key
    text = "\n".join(pages)
    assert "starting" in text  # the extension's own line: this is the pie-lsp channel
    for noise in ("FutureWarning", "Loading weights", "Traceback", "deprecated"):
        assert noise not in text, text
    workbench.page.keyboard.press("Escape")
