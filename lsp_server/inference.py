"""The model's worker thread and the bookkeeping of requests in flight.

All model work runs on one thread per model, so requests are serialised and the event loop
stays free for text changes. A request owns a stop flag that the engine checks between decode
steps: a newer request for the same document sets it (the older one is superseded), and so does
cancelling the request's asyncio task (`$/cancelRequest`), because a thread cannot be cancelled.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

T = TypeVar("T")


class InferenceWorker:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pie-lsp-model")
        self._in_flight: dict[str, threading.Event] = {}
        # Stop flags of the generations queued or running per document, and the most of them
        # ever not told to stop at once: a fast typist must never pile up live generations.
        self._queued: dict[str, set[threading.Event]] = {}
        self.max_pending: dict[str, int] = {}

    def begin(self, uri: str) -> threading.Event:
        """A stop flag for a new request on `uri`; the previous request there is told to stop."""
        previous = self._in_flight.get(uri)
        if previous is not None:
            previous.set()
        flag = threading.Event()
        self._in_flight[uri] = flag
        return flag

    def busy(self, uri: str) -> bool:
        """Whether a request on `uri` is queued or running."""
        return uri in self._in_flight

    def end(self, uri: str, flag: threading.Event) -> None:
        if self._in_flight.get(uri) is flag:
            del self._in_flight[uri]

    def stop_all(self) -> None:
        for flag in self._in_flight.values():
            flag.set()

    async def run(self, function: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(function, *args, **kwargs))

    async def generate(
        self,
        uri: str,
        flag: threading.Event,
        function: Callable[..., T],
        *args: object,
        **kwargs: object,
    ) -> T:
        """`run` for a generation on `uri` stopped by `flag`, counted in `max_pending`."""
        queued = self._queued.setdefault(uri, set())
        queued.add(flag)
        live = sum(not f.is_set() for f in queued)
        self.max_pending[uri] = max(self.max_pending.get(uri, 0), live)
        try:
            return await self.run(function, *args, **kwargs)
        finally:
            queued.discard(flag)

    def submit(self, function: Callable[[], object]) -> None:
        """Run `function` on the worker without waiting for it."""
        self._executor.submit(function)

    def shutdown(self) -> None:
        self.stop_all()
        self._executor.shutdown(wait=False, cancel_futures=True)
