"""stdin for pygls' reader, resynchronised after a malformed frame.

pygls reads headers line by line and drops a line that is not `Content-Length: <digits>`. A frame
whose header is bad still has its body on the wire, and a body ends without a line break, so
the next frame's header arrives glued to it (`{...}Content-Length: 52`) and is dropped too: from
then on every header is glued to the body before it and the server hears nothing again. Cutting
a line at its `Content-Length:` brings the stream back in step at the next frame.
"""

from __future__ import annotations

import logging
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
