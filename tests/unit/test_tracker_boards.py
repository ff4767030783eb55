"""A tune through an RPC tracker checks the tracker and its key first, with one line that says what is wrong."""

from __future__ import annotations

import socket

import pytest

from edgetvm.deploy.tuning_session import tracker_boards
from edgetvm.errors import BoardError


def test_an_unreachable_tracker_fails_at_once_with_its_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(BoardError, match=rf"RPC tracker 127\.0\.0\.1:{port} is unreachable: .*refused"):
            tracker_boards("127.0.0.1", port, "rpi4")
