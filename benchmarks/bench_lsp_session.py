"""Drive the real pie-lsp server over stdio through a scripted editing session, per strategy.

    python -m benchmarks.bench_lsp_session                 # pie, prefix, full on the default model
    python -m benchmarks.bench_lsp_session --demo          # one pie session, printing ghost text

The session works like an editor: it opens a ~2k-token Python file with the cursor near its end,
types a line one character at a time (an inline-completion request after every keystroke), then
edits a line about 1,500 tokens above the cursor several times, asking for a completion after
each edit. Latency is measured from sending the didChange to receiving the completion. Each
strategy runs in its own server process on the same file and script; results go to
benchmarks/results/lsp_session.json.
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
from typing import Any

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities
from transformers import AutoTokenizer

from cache_engine.model.corpus import collect_sources
from cache_engine.model.loading import DEFAULT_MODEL_DIR
from tests.lsp_session import change, inline

RESULTS = Path(__file__).parent / "results" / "lsp_session.json"
REPO = Path(__file__).resolve().parent.parent
URI = "file:///bench/session.py"
TYPED = "        result = self.wrap(text, width=width)"


def session_text(target_tokens: int) -> str:
    """Held-out code cut to about target_tokens tokens at a line end, plus an open line."""
    _, held_out = collect_sources()
    source = next(f.text for f in held_out if f.relative_path == "textwrap.py")
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    lines = source.splitlines(keepends=True)
    text = ""
    for line in lines:
        if len(tokenizer(text + line, add_special_tokens=False)["input_ids"]) > target_tokens:
            break
        text += line
    return text + "\n"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def start(strategy: str, max_new_tokens: int) -> LanguageClient:
    config = ClientServerConfig(
        server_command=[sys.executable, "-m", "lsp_server", "--strategy", strategy],
        server_env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
    )
    client = await config.start()
    options = {"pieLsp": {"debounceMs": 0, "maxNewTokens": max_new_tokens, "maxPromptTokens": 3072}}
    await client.initialize_session(
        types.InitializeParams(
            capabilities=client_capabilities("neovim"), initialization_options=options
        )
    )
    while True:
        stats = await command_stats(client)
        if stats["modelState"] not in ("not loaded", "loading"):
            return client
        await asyncio.sleep(0.1)


async def command_stats(client: LanguageClient) -> dict[str, Any]:
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="pie-lsp.stats", arguments=[])
    )


async def complete(client: LanguageClient, line: int, character: int) -> str:
    items = await inline(client, URI, line, character)
    return items[0].insert_text if items else ""


async def run_session(
    strategy: str, text: str, far_edits: int, max_new_tokens: int, demo: bool
) -> dict[str, Any]:
    client = await start(strategy, max_new_tokens)
    try:
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(
                    uri=URI, language_id="python", version=1, text=text
                )
            )
        )
        cursor_line = text.count("\n")
        version = 1
        # Warm-up: the first request encodes the whole prompt under every strategy.
        await complete(client, cursor_line, 0)
        typing: list[float] = []
        for column, char in enumerate(TYPED):
            version += 1
            started = time.perf_counter()
            change(client, URI, version, (cursor_line, column), (cursor_line, column), char)
            ghost = await complete(client, cursor_line, column + 1)
            typing.append(time.perf_counter() - started)
            if demo:
                print(f"typed {TYPED[: column + 1]!r:50} ghost text {ghost!r}")
        far_line = 8
        after_far: list[float] = []
        edit_costs: list[dict[str, Any]] = []
        for i in range(far_edits):
            version += 1
            started = time.perf_counter()
            if i % 2 == 0:
                inserted = "# edited far above the cursor\n"
                change(client, URI, version, (far_line, 0), (far_line, 0), inserted)
            else:
                change(client, URI, version, (far_line, 0), (far_line + 1, 0), "")
            ghost = await complete(client, cursor_line, len(TYPED))
            after_far.append(time.perf_counter() - started)
            document = (await command_stats(client))["documents"][URI]
            edit_costs.append(document["last_edit"])
            if demo:
                print(f"edit {i + 1} far above: {after_far[-1] * 1000:.0f} ms, ghost {ghost!r}")
        stats = (await command_stats(client))["documents"][URI]
        if demo:
            print(json.dumps(stats, indent=1))
    finally:
        await client.shutdown_session()
    far_cached = [c for c in edit_costs if c]
    return {
        "strategy": strategy,
        "prompt_tokens": stats.get("tokens_cached"),
        "typing_ms_p50": statistics.median(typing) * 1000,
        "typing_ms_p95": percentile(typing, 0.95) * 1000,
        "far_edit_ms_p50": statistics.median(after_far) * 1000,
        "far_edit_ms_p95": percentile(after_far, 0.95) * 1000,
        "far_edit_tokens_encoded_p50": statistics.median(c["tokens_encoded"] for c in far_cached)
        if far_cached
        else None,
        "far_edit_tokens_reused_p50": statistics.median(c["tokens_reused"] for c in far_cached)
        if far_cached
        else None,
        "keystrokes": len(typing),
        "far_edits": len(after_far),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--strategies", nargs="+", default=["pie", "prefix", "full"])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--far-edits", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--demo", action="store_true", help="one pie session, printing ghost text")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    text = session_text(args.tokens)
    if args.demo:
        asyncio.run(run_session("pie", text, 4, args.max_new_tokens, demo=True))
        return
    rows = [
        asyncio.run(run_session(s, text, args.far_edits, args.max_new_tokens, demo=False))
        for s in args.strategies
    ]
    print(
        "| strategy | prompt tokens | typing p50 ms | typing p95 ms | far edit p50 ms "
        "| far edit p95 ms | re-encoded | reused |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['strategy']} | {r['prompt_tokens']} | {r['typing_ms_p50']:.0f} | "
            f"{r['typing_ms_p95']:.0f} | {r['far_edit_ms_p50']:.0f} | {r['far_edit_ms_p95']:.0f} | "
            f"{r['far_edit_tokens_encoded_p50']} | {r['far_edit_tokens_reused_p50']} |"
        )
    by_strategy = {r["strategy"]: r for r in rows}
    if "pie" in by_strategy and "full" in by_strategy:
        ratio = by_strategy["pie"]["far_edit_ms_p50"] / by_strategy["full"]["far_edit_ms_p50"]
        print(f"pie's p50 after a far edit is {ratio * 100:.0f}% of full's")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {"tokens": args.tokens, "max_new_tokens": args.max_new_tokens, "rows": rows}, indent=1
        )
        + "\n"
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
