"""pie-lsp: inline code completion from a local model whose KV cache follows your edits.

pie-lsp                               # stdio (what editors launch)
pie-lsp --tcp --port 2087             # TCP on 127.0.0.1
pie-lsp --model ~/models/my-coder --strategy prefix --log-file /tmp/pie-lsp.log
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence

from cache_engine.completion.settings import EDIT_STRATEGIES
from cache_engine.model.cpu_threading import choose_openmp_wait_policy
from lsp_server.framing import ClosedPipeOutput, ResyncingInput
from lsp_server.server import VERSION, LaunchOptions, create_server

log = logging.getLogger("lsp_server")

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pie-lsp",
        description=(
            "Language server for inline code completion from a local code model whose KV cache "
            "is edited (Positional Integrity Encoding), not recomputed, when you edit the file."
        ),
        epilog=(
            "Settings (initializationOptions or workspace/didChangeConfiguration, under "
            '"pieLsp"): strategy, debounceMs, maxNewTokens, maxPromptTokens, suffixShare, '
            "windowMarginLines, memoryBudgetMb. Command pie-lsp.stats returns per-document "
            "cache statistics."
        ),
    )
    parser.add_argument(
        "--model",
        default="default",
        help="'default' (the shipped model) or a Hugging Face model folder (default: %(default)s)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default=None,
        help="weights dtype (default: float32)",
    )
    parser.add_argument(
        "--quantize",
        choices=("int8", "int8-dynamic"),
        default=None,
        help="int8: weight-only int8 linear layers, about 4x fewer bytes read per token; "
        "int8-dynamic: the same weights by activations rounded to int8 in blocks of 32, "
        "multiplied in integers (faster on CPU, a little less accurate)",
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay each decode step from a CUDA graph (a model on a CUDA --device; untested "
        "here: no GPU)",
    )
    parser.add_argument(
        "--strategy",
        choices=EDIT_STRATEGIES,
        default="pie",
        help="how the cache follows edits: pie (edit in place), prefix (re-encode after the "
        "first change) or full (re-encode everything) (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow .bin/.pt weights, which can run code when loaded",
    )
    parser.add_argument("--log-file", help="write the log here instead of stderr")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="(default: %(default)s)",
    )
    parser.add_argument(
        "--stdio",
        action="store_true",
        help="serve over stdin/stdout, the default; accepted because clients such as "
        "vscode-languageclient append it",
    )
    parser.add_argument("--tcp", action="store_true", help="serve over TCP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1", help="TCP host (default: %(default)s)")
    parser.add_argument("--port", type=int, default=2087, help="TCP port (default: %(default)s)")
    parser.add_argument("--version", action="version", version=f"pie-lsp {VERSION}")
    return parser.parse_args(argv)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    if arguments.stdio and arguments.tcp:
        sys.exit("pie-lsp: --stdio and --tcp exclude each other; pass one of them")
    if arguments.cuda_graphs and not arguments.device.startswith("cuda"):
        sys.exit(f"pie-lsp: --cuda-graphs needs a CUDA --device, not {arguments.device!r}")
    level = getattr(logging, arguments.log_level)
    # stdout carries the protocol, and editors show all of stderr as errors (Neovim's lsp.log
    # marks every line [ERROR]): the log goes to --log-file and to the client as
    # window/logMessage, and stderr gets only what goes wrong when there is no log file.
    if arguments.log_file:
        handler: logging.Handler = logging.FileHandler(arguments.log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.ERROR)
        # pygls reports a client that vanished mid-write as an error: nothing to fix here.
        handler.addFilter(lambda record: record.name.startswith(("lsp_server", "cache_engine")))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # Library warnings (deprecations and the like) become log records instead of stderr lines.
    logging.captureWarnings(True)
    if level > logging.DEBUG:
        # pygls logs every message it sends at INFO: whole documents, on every change.
        logging.getLogger("pygls").setLevel(logging.WARNING)
    # Before the model loads torch (see cpu_threading.py).
    chosen = choose_openmp_wait_policy(arguments.model, arguments.device)
    if chosen:
        log.info(
            "OpenMP workers for this model's size: %s",
            " ".join(f"{name}={value}" for name, value in chosen.items()),
        )
    options = LaunchOptions(
        model=arguments.model,
        device=arguments.device,
        dtype=arguments.dtype,
        quantize=arguments.quantize,
        strategy=arguments.strategy,
        allow_pickle=arguments.allow_pickle,
        cuda_graphs=arguments.cuda_graphs,
        client_log_level=max(level, logging.INFO),
    )
    server = create_server(options)
    if arguments.tcp:
        if not is_loopback(arguments.host):
            log.warning(
                "listening on %s, which is not a loopback address: anyone who can reach this "
                "port can read the documents you edit",
                arguments.host,
            )
        server.start_tcp(arguments.host, arguments.port)
    else:
        server.start_io(ResyncingInput(sys.stdin.buffer), ClosedPipeOutput(sys.stdout.buffer))
    # The client is gone (exit, or end of input): stop a generation still running, or the
    # interpreter would wait for the worker thread to finish it before exiting.
    server.worker.shutdown()
    # Then leave without the interpreter's teardown: it took about 1 s with a model loaded and
    # waited for a model load in progress (4-7 s), and VS Code kills a server that has not gone
    # 2 s after `exit` (its "Restart server" did every time). Only the logs need flushing.
    logging.shutdown()
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass  # the client closed the pipe
    os._exit(server.exit_code)


if __name__ == "__main__":
    main()
