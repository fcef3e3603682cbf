"""The stdio wrappers of lsp_server/framing.py on real pipes."""

from __future__ import annotations

import logging
import os

import pytest

from lsp_server.framing import ClosedPipeOutput


def test_output_drops_what_follows_a_closed_pipe_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    read_end, write_end = os.pipe()
    output = ClosedPipeOutput(os.fdopen(write_end, "wb"))
    frame = b"Content-Length: 2\r\n\r\n{}"
    assert output.write(frame) == len(frame)
    output.flush()
    assert os.read(read_end, 100) == frame
    os.close(read_end)
    with caplog.at_level(logging.INFO, logger="lsp_server.framing"):
        for _ in range(3):
            assert output.write(b"x" * 10) == 10
            output.flush()
    assert output.client_closed
    assert [r.getMessage() for r in caplog.records] == [
        "the client closed the server's output; dropping what is left to send"
    ]
    output.close()
