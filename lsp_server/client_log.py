"""Forward pie-lsp's own log records to the client as window/logMessage notifications."""

from __future__ import annotations

import asyncio
import logging

from lsprotocol import types
from pygls.lsp.server import LanguageServer

_MESSAGE_TYPES = (
    (logging.ERROR, types.MessageType.Error),
    (logging.WARNING, types.MessageType.Warning),
    (logging.INFO, types.MessageType.Info),
)


class ClientLogHandler(logging.Handler):
    """Log records from any thread become window/logMessage, sent from the event loop (the
    transport is not thread-safe)."""

    def __init__(self, server: LanguageServer, loop: asyncio.AbstractEventLoop, level: int):
        super().__init__(level)
        self._server = server
        self._loop = loop
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message_type = next(
                (kind for level, kind in _MESSAGE_TYPES if record.levelno >= level),
                types.MessageType.Log,
            )
            params = types.LogMessageParams(type=message_type, message=self.format(record))
            self._loop.call_soon_threadsafe(self._send, params)
        except Exception:
            self.handleError(record)

    def _send(self, params: types.LogMessageParams) -> None:
        if not self._server.protocol._shutdown:
            self._server.window_log_message(params)
