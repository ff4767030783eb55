"""Measure tuning candidates on a board: MetaSchedule's RPC runner over the deploy session's SSH tunnel.

Candidates are cross-compiled here (``pipeline.tune.local_builder``) and timed on the board by TVM's own
``RPCRunner``: either through the same SSH-tunnelled RPC server as ``edgetvm deploy`` (one board), or on any
board a TVM RPC tracker holds under a key (a board farm: one runner worker per free board, in parallel).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from edgetvm.deploy.bootstrap import ensure_runtime
from edgetvm.deploy.emulated_board import board_cpu_env
from edgetvm.deploy.measure import board_for_target
from edgetvm.deploy.rpc_session import RPCServer
from edgetvm.deploy.ssh import SSHConnection
from edgetvm.errors import BoardError, InputError, last_line
from edgetvm.pipeline.tune import Measurer, measurer_here
from edgetvm.targets import TargetPreset

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
SESSION_TIMEOUT_S = 120  # one candidate: connect, upload, load, time (slow under qemu-user)
TRACKER_CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class BoardTuningOptions:
    """Where ``edgetvm tune`` measures an ARM target: a board by name (or the emulated one), or a tracker key."""

    board: str | None = None
    boards_file: str | None = None
    trust_new_host: bool = False
    rpc_tracker: str | None = None
    rpc_key: str | None = None

    def __post_init__(self) -> None:
        if bool(self.rpc_tracker) != bool(self.rpc_key):
            raise InputError(
                "--rpc-tracker and --rpc-key go together (e.g. --rpc-tracker 10.0.0.5:9190 --rpc-key rpi4)"
            )
        if self.rpc_tracker and self.board:
            raise InputError("--rpc-tracker takes any board of its key: drop --board")


def _evaluator():
    from tvm.s_tir import meta_schedule as ms

    return ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40, enable_cpu_cache_flush=False)


def _connect_forwarded(host: str, port: int, rpc_config):
    """``f_create_session`` for a server reached through a port forward (no tracker in between)."""
    from tvm import rpc

    return rpc.connect(host, port, session_timeout=rpc_config.session_timeout_sec)


def _remove_upload(session, remote_path: str | None) -> None:
    """``f_cleanup``: remove the uploaded candidate only (the default also removes the server's directory)."""
    if session is not None and remote_path is not None:
        session.remove(remote_path)


def tracker_boards(host: str, port: int, key: str) -> int:
    """How many boards (free or busy) are registered with the tracker under ``key``; at least one.

    Raises
    ------
    BoardError
        When the tracker does not answer (at once: TVM's own client retries a refused connection for 60 s),
        or no board holds ``key``.
    """
    from tvm import rpc

    where = f"RPC tracker {host}:{port}"
    try:
        socket.create_connection((host, port), timeout=TRACKER_CONNECT_TIMEOUT_S).close()
        summary = rpc.connect_tracker(host, port).summary()
    except Exception as err:  # OSError for the probe, TVMError / RuntimeError from TVM's client
        raise BoardError(f"{where} is unreachable: {last_line(err)}; check --rpc-tracker") from err
    keys = [server["key"].partition(":")[2] for server in summary.get("server_info", [])]
    if key not in keys:
        raise BoardError(
            f"{where} has no board with key {key!r} (its keys: {sorted(set(keys)) or 'none'}); a board joins with "
            f"python -m tvm.exec.rpc_server --tracker {host}:{port} --key {key}"
        )
    return keys.count(key)


@contextmanager
def board_measurer(
    target: TargetPreset, options: BoardTuningOptions, progress: Progress | None = None
) -> Iterator[Measurer]:
    """A ``Measurer`` whose runner times candidates on a board; the board session closes on exit."""
    from tvm.s_tir import meta_schedule as ms

    workers = max(1, os.cpu_count() or 1)
    if options.rpc_tracker:
        host, sep, port = options.rpc_tracker.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise InputError(f"--rpc-tracker {options.rpc_tracker!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
        boards = tracker_boards(host, int(port), options.rpc_key)
        config = ms.runner.RPCConfig(host, int(port), options.rpc_key, session_timeout_sec=SESSION_TIMEOUT_S)
        runner = ms.runner.RPCRunner(config, _evaluator(), f_cleanup=_remove_upload, max_workers=boards)
        yield measurer_here(target, runner, workers)
        return
    board = board_for_target(target, options.board, options.boards_file, "tuning for", progress)
    with SSHConnection(board, trust_new_host=options.trust_new_host) as conn:
        ensure_runtime(conn, target, progress)
        server = RPCServer(conn, threads=target.threads, env=board_cpu_env(board, target))
        try:
            local_port = conn.forward(server.start(progress))
            # RPCConfig wants tracker fields; the forward's address stands there, and _connect_forwarded uses it.
            config = ms.runner.RPCConfig("127.0.0.1", local_port, "ssh-forward", session_timeout_sec=SESSION_TIMEOUT_S)
            runner = ms.runner.RPCRunner(
                config,
                _evaluator(),
                f_create_session=functools.partial(_connect_forwarded, "127.0.0.1", local_port),
                f_cleanup=_remove_upload,
                max_workers=1,  # TVM's RPC server serves one session at a time
            )
            yield measurer_here(target, runner, workers)
        finally:
            server.stop()
