"""One emulated board for the whole session: Python under qemu takes ~15 s to start, so tests share it."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

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


@pytest.fixture()
def tracker(free_port):
    """A TVM RPC tracker on 127.0.0.1 (``HOST:PORT``); the emulated board shares the host's loopback."""
    command = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*command, "--port", str(free_port), "--port-end", str(free_port + 1)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:  # until it listens (importing tvm takes seconds)
        try:
            socket.create_connection(("127.0.0.1", free_port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise AssertionError(f"the RPC tracker did not listen on 127.0.0.1:{free_port} (exit code {proc.poll()})")
    yield f"127.0.0.1:{free_port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def board_on_tracker():
    """``with board_on_tracker(conn, tracker, key, env):`` an RPC server on the board registered under ``key``.

    It runs in its own process group and directory, both killed and removed on exit.
    """
    return _board_on_tracker


@contextmanager
def _board_on_tracker(conn: SSHConnection, tracker: str, key: str, env: dict[str, str] | None = None):
    run_dir = f"{conn.board.remote_workdir}/farm-{secrets.token_hex(4)}"
    variables = "".join(f"{name}={value} " for name, value in {"TMPDIR": f"{run_dir}/tmp", **(env or {})}.items())
    pgid = int(
        conn.run(
            f"mkdir -p {run_dir}/tmp && cd {run_dir} || exit 1; {variables}setsid nohup "
            f"{conn.board.remote_workdir}/venv/bin/python -m tvm.exec.rpc_server --host 127.0.0.1 --port 9190 "
            f"--port-end 9199 --tracker {tracker} --key {key} > server.log 2>&1 < /dev/null & echo $!"
        ).stdout
    )
    try:
        wait_for_key(tracker, key)
        yield run_dir
    finally:
        conn.run(f"kill -KILL -{pgid}; rm -rf {run_dir}", check=False)


def wait_for_key(tracker: str, key: str, timeout: float = 180.0) -> None:
    """Wait until a server registered with ``key`` is free on ``tracker`` (Python under qemu starts slowly)."""
    from tvm import rpc

    host, port = tracker.split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if key in rpc.connect_tracker(host, int(port)).summary().get("queue_info", {}):
                return
        except Exception:  # the tracker may still be starting
            pass
        time.sleep(2)
    raise AssertionError(f"no board registered with key {key} within {timeout} s")
