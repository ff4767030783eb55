"""One emulated board for the whole session: Python under qemu takes ~15 s to start, so tests share it."""

from __future__ import annotations

import socket

import pytest

from edgetvm.deploy.boards import BoardConfig
from edgetvm.deploy.emulated_board import EmulatedBoard
from edgetvm.deploy.ssh import SSHConnection


@pytest.fixture(scope="session")
def emulated_board():
    board = EmulatedBoard()
    was_up = board.status() is not None
    state = board.up()
    yield state
    if not was_up:
        board.down()


@pytest.fixture(scope="session")
def board_config(emulated_board) -> BoardConfig:
    return emulated_board.board_config("rpi4")


@pytest.fixture(scope="session")
def board_runtime(board_config):
    """The TVM runtime installed on the board (the first test to need it pays for the bootstrap)."""
    from edgetvm.deploy.bootstrap import ensure_runtime
    from edgetvm.targets import resolve_target

    with SSHConnection(board_config) as conn:
        return ensure_runtime(conn, resolve_target("rpi4"))


@pytest.fixture()
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ssh(board_config):
    with SSHConnection(board_config) as conn:
        yield conn


@pytest.fixture(scope="session")
def board_processes():
    """``board_processes(conn, pattern)``: the board's matching processes of the login user."""
    return _board_processes


def _board_processes(conn: SSHConnection, pattern: str = "tvm.exec") -> list[str]:
    """Command lines of the board's processes matching ``pattern`` (ps is not in a minimal rootfs)."""
    out = conn.run(
        'for p in /proc/[0-9]*; do [ "$(stat -c %U $p 2>/dev/null)" = "$(id -un)" ] && '
        "tr '\\0' ' ' < $p/cmdline 2>/dev/null && echo; done",
        check=False,
    ).stdout
    return [line for line in out.splitlines() if pattern in line and "for p in" not in line]
