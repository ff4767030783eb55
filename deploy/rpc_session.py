"""A TVM RPC session on a board: server bound to the board's 127.0.0.1, reached through an SSH tunnel.

TVM RPC has no authentication, so the server never listens on the board's network interface; the host reaches
it through a port forward of the SSH connection. The server runs in its own process group and working
directory, both removed when the session ends, also on error or Ctrl-C.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable

from edgetvm.deploy.ssh import SSHConnection, quote
from edgetvm.errors import BoardError, last_line

log = logging.getLogger(__name__)

RPC_PORT_RANGE = (9090, 9199)
SERVER_START_TIMEOUT_S = 180.0  # Python plus `import tvm` take tens of seconds under qemu-user
_BIND_LINE = re.compile(r"bind to 127\.0\.0\.1:(\d+)")


class RPCServer:
    """``python -m tvm.exec.rpc_server`` on the board, bound to 127.0.0.1, in its own process group."""

    def __init__(self, conn: SSHConnection, threads: int | None = None, env: dict[str, str] | None = None):
        self.conn = conn
        self.threads = threads
        self.env = dict(env or {})
        self.run_dir = f"{conn.board.remote_workdir}/run/{int(time.time())}-{secrets.token_hex(4)}"
        self.pgid: int | None = None
        self.port: int | None = None

    def start(self, progress: Callable[[str], None] | None = None) -> int:
        """Start the server and wait until it listens; returns the board-side port."""
        workdir = self.conn.board.remote_workdir
        run_dir = quote(self.run_dir)
        env = f"TMPDIR={run_dir}/tmp" + (f" TVM_NUM_THREADS={int(self.threads)}" if self.threads else "")
        env += "".join(f" {name}={quote(value)}" for name, value in self.env.items())
        command = (
            # `&` binds to the whole `a && b` list, so the directory setup is a separate statement: only the
            # server itself goes to the background, and $! is its pid (and, after setsid, its process group).
            f"mkdir -p {run_dir}/tmp && cd {run_dir} || exit 1; {env} setsid nohup {quote(workdir)}/venv/bin/python -m "
            f"tvm.exec.rpc_server --host 127.0.0.1 --port {RPC_PORT_RANGE[0]} --port-end {RPC_PORT_RANGE[1]} "
            f"> {run_dir}/server.log 2>&1 < /dev/null & echo $! | tee {run_dir}/server.pid"
        )
        self.pgid = int(self.conn.run(command).stdout.strip())
        if progress:
            progress(f"starting the TVM RPC server on {self.conn.board.name}")
        self.port = self._wait_for_port()
        return self.port

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            probe = self.conn.run(
                f"cat {quote(self.run_dir)}/server.log; kill -0 {self.pgid} 2>/dev/null && echo ALIVE || echo DEAD",
                check=False,
            ).stdout
            match = _BIND_LINE.search(probe)
            if match:
                return int(match.group(1))
            if probe.rstrip().endswith("DEAD"):
                tail = [line for line in probe.splitlines() if line.strip() and line != "DEAD"][-1:] or ["no output"]
                raise BoardError(f"board {self.conn.board.name!r}: the TVM RPC server exited at start: {tail[0]}")
            time.sleep(1.0)
        raise BoardError(
            f"board {self.conn.board.name!r}: the TVM RPC server did not listen within {SERVER_START_TIMEOUT_S:.0f} s"
        )

    def alive(self) -> bool:
        """Whether the server process runs (a killed one can linger as a zombie: state ``Z``)."""
        if self.pgid is None:
            return False
        state = self.conn.run(f"cut -d' ' -f3 /proc/{self.pgid}/stat 2>/dev/null", check=False).stdout.strip()
        return state not in ("", "Z", "X")

    def stop(self) -> None:
        """Kill the server's whole process group (its forked workers too) and remove its directory.

        The group id comes from ``server.pid`` on the board when the start command did not answer in time.
        """
        run_dir = quote(self.run_dir)
        pg = str(self.pgid) if self.pgid is not None else f"$(cat {run_dir}/server.pid 2>/dev/null)"
        self.conn.run(
            f'pg={pg}; if [ -n "$pg" ]; then kill -TERM -$pg 2>/dev/null; for i in 1 2 3 4 5 6 7 8 9 10; do '
            f"kill -0 -$pg 2>/dev/null || break; sleep 0.5; done; kill -KILL -$pg 2>/dev/null; fi; rm -rf {run_dir}",
            check=False,
            timeout=60,
        )
        self.pgid = None


class BoardSession:
    """SSH connection + RPC server + tunnel + ``tvm.rpc`` session. Use as a context manager.

    Attributes
    ----------
    remote : tvm.rpc.RPCSession
        The connected session (upload, load_module, cpu()).

    ``env`` is added to the server's environment (``QEMU_CPU`` on the emulated board).
    """

    def __init__(self, conn: SSHConnection, threads: int | None = None, progress=None, env=None):
        self.conn = conn
        self.server = RPCServer(conn, threads, env)
        self.progress = progress
        self.remote = None

    def __enter__(self) -> BoardSession:
        from tvm import rpc

        try:
            board_port = self.server.start(self.progress)
            local_port = self.conn.forward(board_port)
            self.remote = rpc.connect("127.0.0.1", local_port, session_timeout=0)
        except BoardError:
            self.close()
            raise
        except BaseException as err:
            self.close()
            if isinstance(err, Exception):
                raise BoardError(f"board {self.conn.board.name!r}: cannot connect to its RPC server: {err}") from err
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.remote = None
        self.server.stop()


class TrackerSession:
    """A board taken from a TVM RPC tracker by key (a board farm). Use as a context manager.

    Boards register themselves with ``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY``; the
    tracker hands out a free one per request. TVM RPC has no authentication: keep the tracker and its boards on
    a trusted lab network (or reach it through an SSH tunnel).
    """

    def __init__(self, tracker: str, key: str, timeout_s: float = 60.0):
        host, sep, port = tracker.rpartition(":")
        if not sep or not host or not port.isdigit():
            from edgetvm.errors import InputError

            raise InputError(f"--rpc-tracker {tracker!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
        self.host, self.port, self.key, self.timeout_s = host, int(port), key, timeout_s
        self.name = f"tracker {tracker} key {key}"
        self.remote = None

    def __enter__(self) -> TrackerSession:
        from tvm import rpc

        try:
            tracker = rpc.connect_tracker(self.host, self.port)
        except Exception as err:  # TVM raises TVMError/RuntimeError for a refused or reset connection
            raise BoardError(f"RPC tracker {self.host}:{self.port} is unreachable: {last_line(err)}") from err
        summary = tracker.summary()
        free = [q for q in summary.get("queue_info", {}) if q == self.key]
        if not free:
            known = sorted(summary.get("queue_info", {}))
            raise BoardError(f"RPC tracker {self.host}:{self.port} has no board with key {self.key!r}; keys: {known}")
        try:
            self.remote = tracker.request(self.key, priority=1, session_timeout=0, max_retry=3)
        except Exception as err:  # the tracker answers a failed request with a TVMError
            raise BoardError(
                f"RPC tracker {self.host}:{self.port}: no board for key {self.key!r}: {last_line(err)}"
            ) from err
        return self

    def __exit__(self, *exc) -> None:
        self.remote = None

    def alive(self) -> bool:
        return False  # nothing to probe out of band: any RPC failure counts as the board gone
