"""The stdio streams pygls reads and writes: stdin resynchronised after a malformed frame, and
stdout that stays quiet once the client has closed it.

pygls reads headers line by line and drops a line that is not `Content-Length: <digits>`. A frame
whose header is bad still has its body on the wire, and a body ends without a line break, so
the next frame's header arrives glued to it (`{...}Content-Length: 52`) and is dropped too: from
then on every header is glued to the body before it and the server hears nothing again. Cutting
a line at its `Content-Length:` brings the stream back in step at the next frame.
"""

from __future__ import annotations

import logging
import os
import re
from typing import BinaryIO

log = logging.getLogger(__name__)

HEADER = b"Content-Length:"
VALID_HEADER = re.compile(rb"^(Content-Length: \d+|Content-Type: [^\r\n]*)\r\n$")


class ResyncingInput:
    """The `readline`/`read` that pygls' StdinAsyncReader calls, on top of a binary stream."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw

    def readline(self) -> bytes:
        line = self.raw.readline()
        start = line.find(HEADER)
        if start > 0:
            log.warning("dropped %d bytes of malformed LSP framing before a header", start)
            line = line[start:]
        if line.strip() and not VALID_HEADER.match(line):
            log.warning("malformed LSP header ignored: %r", line[:80])
        return line

    def read(self, size: int = -1) -> bytes:
        return self.raw.read(size)


class ClosedPipeOutput:
    """The stdout that pygls' writer writes to and flushes, on top of a binary stream.

    Editors often close the server's pipes as they quit, before they read the answer to
    `shutdown` (Neovim's `:qa!` after an editing session does). pygls then logs each write that
    fails as an ERROR with two or three tracebacks, about a hundred lines in the server's log
    for a normal quit. Here the first broken pipe is logged once at INFO, and what follows is
    dropped; the server ends when its input ends, as it does whenever the client goes."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.client_closed = False

    def write(self, data: bytes) -> int:
        if not self.client_closed:
            try:
                self.raw.write(data)
            except BrokenPipeError:
                self._client_closed()
        return len(data)

    def flush(self) -> None:
        if not self.client_closed:
            try:
                self.raw.flush()
            except BrokenPipeError:
                self._client_closed()

    def close(self) -> None:
        try:
            self.raw.close()
        except OSError:
            pass

    def _client_closed(self) -> None:
        self.client_closed = True
        log.info("the client closed the server's output; dropping what is left to send")
        try:
            # What the stream still buffers would fail again when the interpreter flushes it
            # at exit, and Python would print that to stderr.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.raw.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
