"""A fast typist against pie-lsp: 300 keystrokes 20 ms apart on a 2k-token file, each followed
by an inline completion request. Reports latency percentiles and the server's peak RSS.

python -m benchmarks.bench_burst [--model default] [--keystrokes 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

from lsprotocol import types
from pytest_lsp import ClientServerConfig

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "burst.json"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(model: str, keystrokes: int) -> dict[str, object]:
    config = ClientServerConfig(
        server_command=[sys.executable, "-m", "lsp_server", "--model", model],
        server_env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
    )
    client = await config.start()
    await client.initialize_session(types.InitializeParams(capabilities=types.ClientCapabilities()))
    pid = client._server.pid  # the subprocess pytest-lsp started
    while True:
        state = await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="pie-lsp.stats")
        )
        if state["modelState"] not in ("not loaded", "loading"):
            break
        await asyncio.sleep(0.2)
    uri = "file:///bench/burst.py"
    text = "".join(
        f"def helper_{i}(values):\n    total = sum(values) + {i}\n    return total\n\n\n"
        for i in range(110)
    )
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=uri, language_id="python", version=1, text=text
            )
        )
    )
    row, column = text.count("\n") // 2, 0
    typed = ("    value = compute(total, count) + 1\n" * 20)[:keystrokes]
    latencies: list[float] = []
    outcomes = {"answered": 0, "empty": 0, "error": 0}

    async def request(position: types.Position) -> None:
        started = time.perf_counter()
        try:
            result = await client.text_document_inline_completion_async(
                types.InlineCompletionParams(
                    text_document=types.TextDocumentIdentifier(uri=uri),
                    position=position,
                    context=types.InlineCompletionContext(
                        trigger_kind=types.InlineCompletionTriggerKind.Automatic
                    ),
                )
            )
        except Exception:
            outcomes["error"] += 1
            return
        latencies.append(time.perf_counter() - started)
        outcomes["answered" if result else "empty"] += 1

    tasks = []
    for version, key in enumerate(typed, start=2):
        start = types.Position(line=row, character=column)
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[
                    types.TextDocumentContentChangePartial(
                        range=types.Range(start=start, end=start), text=key
                    )
                ],
            )
        )
        row, column = (row + 1, 0) if key == "\n" else (row, column + 1)
        tasks.append(asyncio.create_task(request(types.Position(line=row, character=column))))
        await asyncio.sleep(0.02)
    await asyncio.gather(*tasks)
    final = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="pie-lsp.stats", arguments=[uri])
    )
    peak = peak_rss_mb(pid)
    await client.shutdown_session()
    await client.stop()
    ordered = sorted(latencies)
    return {
        "model": model,
        "keystrokes": keystrokes,
        "interval_ms": 20,
        "requests": outcomes,
        "latency_ms": {
            "p50": 1000 * statistics.median(ordered),
            "p95": 1000 * ordered[int(0.95 * (len(ordered) - 1))],
            "max": 1000 * ordered[-1],
        },
        "server_peak_rss_mb": peak,
        "document": final["documents"][uri],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--keystrokes", type=int, default=300)
    arguments = parser.parse_args()
    result = asyncio.run(run(arguments.model, arguments.keystrokes))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("requests", "latency_ms", "server_peak_rss_mb")}))


if __name__ == "__main__":
    main()
