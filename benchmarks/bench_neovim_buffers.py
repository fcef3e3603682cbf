"""Neovim with one buffer against six: requests sent and keystroke → answer, default model.

    python -m benchmarks.bench_neovim_buffers     # results in benchmarks/results/neovim_buffers.json

The real Neovim that scripts/setup installs, with editor_configs/neovim/pie_lsp.lua, types the
same 22 keys into the last of N open buffers, one key every 300 ms (longer than Neovim's own
200 ms debounce, so each key may ask once). A keystroke's latency runs from the key to the
arrival of the answer to the request it caused, Neovim's debounce included.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from tests.server.test_neovim import RECORD_RESPONSES, STATS, launch

RESULTS = Path(__file__).parent / "results" / "neovim_buffers.json"
KEYS = "value = os.path.join(a"
COUNT_REQUESTS = """
local client = vim.lsp.get_clients({ name = 'pie_lsp', bufnr = 0 })[1]
_G.pie_requests = 0
local request = client.request
client.request = function(self, method, params, handler, bufnr)
  if method == 'textDocument/inlineCompletion' then _G.pie_requests = _G.pie_requests + 1 end
  return request(self, method, params, handler, bufnr)
end
"""


def wait(condition, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError("timed out")


def session(buffers: int, folder: Path) -> dict[str, object]:
    source = Path(sysconfig.get_paths()["stdlib"]) / "json" / "decoder.py"
    nvim = launch([sys.executable, "-m", "lsp_server"], "{ debounceMs = 0 }")
    try:
        for index in range(buffers):
            path = folder / f"buffer_{buffers}_{index}.py"
            shutil.copy(source, path)
            nvim.command(f"edit {path}")
            wait(lambda: nvim.exec_lua("return #vim.lsp.get_clients({ bufnr = 0 })", []))
        wait(lambda: (nvim.exec_lua(STATS, []) or {}).get("modelState") == "ready")
        nvim.exec_lua(RECORD_RESPONSES, [])
        nvim.exec_lua(COUNT_REQUESTS, [])
        nvim.command("normal! G")
        nvim.input("o")
        latencies = []
        for key in KEYS:
            answered = nvim.exec_lua("return #_G.pie_received", [])
            started = time.monotonic()
            nvim.input(key)
            try:
                wait(lambda a=answered: nvim.exec_lua("return #_G.pie_received", []) > a, 10)
                latencies.append(time.monotonic() - started)
            except TimeoutError:
                pass
            rest = 0.3 - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)
        time.sleep(1)
        return {
            "buffers": buffers,
            "keys": len(KEYS),
            "requests": nvim.exec_lua("return _G.pie_requests", []),
            "answered_keys": len(latencies),
            "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        }
    finally:
        try:
            nvim.command("qa!")
        except EOFError:
            pass  # Neovim exits before it answers
        nvim.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="pie-lsp-nvim-"))
    runs = []
    for _ in range(args.repeats):
        for buffers in (1, 6):  # interleaved
            runs.append(session(buffers, folder))
            print(runs[-1])
    summary = {}
    for buffers in (1, 6):
        mine = [r for r in runs if r["buffers"] == buffers]
        summary[str(buffers)] = {
            "requests_per_22_keys": max(r["requests"] for r in mine),
            "p50_ms": statistics.median(r["p50_ms"] for r in mine if r["p50_ms"] is not None),
        }
    summary["p50_ratio_6_to_1"] = summary["6"]["p50_ms"] / summary["1"]["p50_ms"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"runs": runs, "summary": summary}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
