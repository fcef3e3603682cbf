"""The shipped .vsix in a real VS Code (code-server), timed the way a user sees it.

    python -m benchmarks.bench_vscode             # results in benchmarks/results/vscode.json

Needs the rig of scripts/vscode-rig. Measures, on copies of standard-library files:
- open a file in a fresh window → ghost text, including the server start and the model load
  (typing on where the confidence gate hides the suggestion);
- a scripted session (--minutes, default 5) typing new lines at 10 characters a second in the
  three files: after how many keystrokes ghost text is visible before the next key;
- once typing stops, keystroke → ghost text (p50, p95), and how often the confidence gate hid
  the suggestion instead (read from the server's log);
- error toasts seen during the session, and noise in the pie-lsp output channel.
Run on a quiet machine (pause training).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

from tests.vscode.test_vscode import FILES, server_settings
from tests.vscode.workbench import (
    CodeServer,
    Workbench,
    install_rig,
    package_extension,
    wait_until,
)

RESULTS = Path(__file__).parent / "results" / "vscode.json"
LINES = (
    "def parse_object(s, end):",
    "        result = self.wrap(text)",
    "    values = [item for item in items]",
    "        if end != len(s):",
    "    return obj, end",
)


# Typed after `def scan(s, idx):` until the first ghost text shows.
BODY = "    end = idx\n    while s[end] in WHITESPACE:\n        end += 1\n    return end\n"


def wait_outcome(bench: Workbench, timeout: float) -> str:
    """What the user sees at the cursor, once it is settled:
    - "ghost": ghost text shows;
    - "gated": the server answered nothing because of the confidence gate (whole, or its cut at
      the first token);
    - "empty": the server answered nothing for another reason (a stop rule, end of text);
    - "not drawn": the server answered a suggestion that VS Code did not draw within a second
      (with the word-suggestion list open, VS Code draws only what extends its selected item);
    - "none": neither ghost text nor an answer within `timeout` seconds."""
    answered_at: float | None = None

    def outcome() -> str | None:
        nonlocal answered_at
        if bench.ghost_text() is not None:
            return "ghost"
        # The status bar shows the cursor a moment after a key, so it is read on every poll.
        answer = bench.answer_at(bench.cursor())
        if answer is None:
            return None
        suggestion, reason = answer
        if suggestion in ("''", '""'):
            gated = reason.startswith("confidence") or reason == "low-confidence token"
            return "gated" if gated else "empty"
        answered_at = answered_at or time.monotonic()
        return "not drawn" if time.monotonic() - answered_at > 1.0 else None

    try:
        return wait_until(outcome, timeout, "ghost text or the server's answer")
    except TimeoutError:
        return "none"


def new_line(page) -> None:
    """A new last line with no indentation: VS Code indents after a line ending in ":", and the
    typed lines bring their own, so left alone the indentation would pile up line after line."""
    page.keyboard.press("Control+End")
    page.keyboard.press("Enter")
    for _ in range(6):  # outdent, a level a press; a no-op at column 0
        page.keyboard.press("Shift+Tab")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--stop-pauses", type=int, default=10)
    parser.add_argument(
        "--minutes", type=float, default=5.0, help="keep the scripted session going this long"
    )
    parser.add_argument(
        "--gate-open",
        action="store_true",
        help="minConfidence 0 and minTokenProb 0, as the editor tests run (default: shipped gate)",
    )
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    rig = install_rig()
    vsix = package_extension(rig)
    home = Path(tempfile.mkdtemp(prefix="pie-lsp-vscode-"))
    log = home / "pie-lsp.log"
    # Only the server path is set (the shipped gate) unless --gate-open.
    settings = server_settings(log, gate_open=args.gate_open)
    server = CodeServer(rig, home, vsix, settings, log)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name, relative in FILES.items():
        shutil.copy(stdlib / relative, server.workspace / name)
    server.start()
    result: dict[str, object] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                args=["--no-sandbox"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            bench = Workbench(page, server)
            bench.load()
            opened = time.monotonic()
            bench.open("decoder.py")
            page.keyboard.press("Control+End")
            page.keyboard.type("\n\ndef scan(s, idx):\n")
            # A user who opens a file keeps typing where the gate hides what the model says,
            # so the body is typed on, a character at a time, until ghost text shows.
            typed = 0
            while True:
                outcome = wait_outcome(bench, timeout=60)
                if outcome in ("ghost", "none") or typed == len(BODY):
                    break
                page.keyboard.type(BODY[typed])
                typed += 1
            result["open_to_first_ghost_text_s"] = (
                time.monotonic() - opened if outcome == "ghost" else None
            )
            result["first_ghost_text_after_typing"] = BODY[:typed]
            bench.ready()

            visible_before_next = 0
            keystrokes = 0
            session_started = time.monotonic()
            rounds = 0
            # The scripted session: new lines typed at 10 characters a second, file after file,
            # until --minutes have passed.
            while rounds == 0 or time.monotonic() - session_started < args.minutes * 60:
                bench.open(list(FILES)[rounds % len(FILES)])
                for line in LINES:
                    new_line(page)
                    for char in line:
                        page.keyboard.type(char)
                        keystrokes += 1
                        page.wait_for_timeout(100)  # 10 characters a second
                        visible_before_next += bench.ghost_text() is not None
                rounds += 1
            result["session_minutes"] = (time.monotonic() - session_started) / 60
            result["typing_10_cps"] = {
                "keystrokes": keystrokes,
                "ghost_visible_before_next_key": visible_before_next / keystrokes,
            }

            latencies = []
            outcomes: dict[str, int] = {}
            for index in range(args.stop_pauses):
                new_line(page)
                page.keyboard.press("Enter")
                page.keyboard.type(f"def helper_{index}(value, items):", delay=100)
                # The last key (a new line in the body), then nothing: until ghost text shows.
                started = time.monotonic()
                page.keyboard.press("Enter")
                outcome = wait_outcome(bench, timeout=30)
                if outcome == "ghost":
                    latencies.append(time.monotonic() - started)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                page.keyboard.press("Escape")
            result["after_typing_stops"] = {
                "samples": args.stop_pauses,
                "outcomes": outcomes,
                "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
                "p95_ms": 1000 * percentile(latencies, 0.95) if latencies else None,
            }
            result["error_toasts"] = bench.error_toasts()
            bench.command("Output: Show Output Channels...")
            page.wait_for_selector(
                ".quick-input-list .monaco-list-row:has-text('pie-lsp')", timeout=60_000
            )
            page.keyboard.type("pie-lsp")
            page.keyboard.press("Enter")
            channel = page.locator(".output-view .monaco-editor .view-lines").first
            page.wait_for_timeout(1000)
            text = channel.inner_text().replace("\xa0", " ")
            result["output_channel_noise"] = [
                noise
                for noise in ("FutureWarning", "Loading weights", "Traceback", "deprecated")
                if noise in text
            ]
            page.screenshot(path=str(home / "end.png"))
            browser.close()
    finally:
        server.stop()
    pie_log = log.read_text() if log.exists() else ""
    result["server_log_errors"] = [line for line in pie_log.splitlines() if " ERROR " in line]
    result["confidence_gate"] = "open" if args.gate_open else "shipped"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"wrote {args.output}; screenshots and logs in {home}")


if __name__ == "__main__":
    main()
