"""The host's side of the baseline worker (``baseline_worker.py``): its line protocol, and the worker on a board.

``WorkerProtocol`` speaks the protocol over any pair of streams (a local pipe in the tests, an SSH channel for a
board); ``BoardBaselineWorker`` pushes the worker to a board, starts it in a run directory of its own over one
SSH channel, and stops it and removes that directory when the bench ends, also on error or Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import IO, Any

import numpy as np

from edgetvm.deploy.baseline_runtime import worker_script
from edgetvm.deploy.baseline_worker import PROTOCOL, decode_arrays, encode_arrays
from edgetvm.deploy.ssh import SSHConnection, quote
from edgetvm.errors import BoardError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 900.0  # loading a model into onnxruntime under qemu-user takes tens of seconds
QUIT_TIMEOUT_S = 10.0


class WorkerRequestError(BoardError):
    """The worker answered a request with an error (a model it cannot load, a failed run); it serves on."""


class WorkerProtocol:
    """Requests to a baseline worker: one JSON line out, one JSON line back.

    Parameters
    ----------
    requests, replies : binary streams
        The worker's stdin (written) and stdout (read).
    where : str
        What error messages call the worker (``the baseline worker on board 'emulated'``).
    describe_exit : callable, optional
        Why the worker stopped answering (its log's last line), for the error when its stdout ends.
    """

    def __init__(
        self, requests: IO[bytes], replies: IO[bytes], where: str, describe_exit: Callable[[], str] | None = None
    ):
        self.requests = requests
        self.replies = replies
        self.where = where
        self.describe_exit = describe_exit or (lambda: "no log")

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``op`` with ``fields``; the reply's fields (``ok`` removed).

        Raises
        ------
        WorkerRequestError
            When the worker answers with an error.
        BoardError
            When the worker is gone, times out or answers something that is not the protocol.
        """
        try:
            self.requests.write((json.dumps({"op": op, **fields}) + "\n").encode())
            self.requests.flush()
            line = self.replies.readline()
        except (TimeoutError, OSError, EOFError) as err:
            raise BoardError(f"{self.where}: no answer to {op!r} ({type(err).__name__}: {err})") from err
        if not line:
            raise BoardError(f"{self.where} exited during {op!r}: {self.describe_exit()}")
        try:
            reply = json.loads(line)
        except json.JSONDecodeError as err:
            raise BoardError(f"{self.where}: answered {op!r} with a line that is not JSON: {line[:80]!r}") from err
        if not reply.pop("ok", False):
            raise WorkerRequestError(f"{self.where}: {op} failed: {reply.get('error', 'no error text')}")
        return reply

    def hello(self) -> dict[str, Any]:
        """The worker's facts (versions, Python, machine); checks that it speaks this protocol."""
        reply = self.request("hello")
        if reply.get("protocol") != PROTOCOL:
            raise BoardError(f"{self.where} speaks protocol {reply.get('protocol')}, not {PROTOCOL}")
        return reply

    def send_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        self.request("inputs", npz=encode_arrays(inputs))

    def load(self, name: str, runtime: str, path: str, threads: int) -> dict[str, Any]:
        """Open ``path`` (on the worker's machine) in ``runtime`` under ``name``; the session's details."""
        return self.request("load", name=name, runtime=runtime, path=path, threads=threads)["details"]

    def outputs(self, name: str) -> list[np.ndarray]:
        """One run of session ``name`` on the inputs; its outputs in the model's order."""
        arrays = decode_arrays(self.request("outputs", name=name)["npz"])
        return [arrays[f"out{index}"] for index in range(len(arrays))]

    def time_once(self, name: str, settle_s: float) -> float:
        """Seconds of one run of ``name`` by the worker's clock, after ``settle_s`` of untimed runs."""
        return self.request("time", name=name, settle_ms=settle_s * 1e3)["ms"] / 1e3

    def quit(self) -> None:
        self.request("quit")


class BoardBaselineWorker:
    """``baseline_worker.py`` running on a board in the baselines venv. Use as a context manager.

    ``env`` is added to the worker's environment (``QEMU_CPU`` on the emulated board).

    Attributes
    ----------
    protocol : WorkerProtocol
        Requests to the worker.
    run_dir : str
        The worker's directory on the board (its script, its log, the models pushed to it).
    """

    def __init__(self, conn: SSHConnection, python: str, env: dict[str, str] | None = None):
        self.conn = conn
        self.python = python
        self.env = dict(env or {})
        self.run_dir = f"{conn.board.remote_workdir}/run/bench-{int(time.time())}-{secrets.token_hex(4)}"
        self.where = f"the baseline worker on board {conn.board.name!r}"
        self.pid: int | None = None
        self.protocol: WorkerProtocol | None = None
        self._channel = None

    def __enter__(self) -> BoardBaselineWorker:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        run_dir = quote(self.run_dir)
        self.conn.run(f"mkdir -p {run_dir}")
        self.conn.put(worker_script(), f"{self.run_dir}/baseline_worker.py")
        env = "".join(f"{name}={quote(value)} " for name, value in self.env.items())
        worker = f"{env}exec {quote(self.python)} -u baseline_worker.py 2> {run_dir}/worker.log"
        command = f"cd {run_dir} && echo $$ && {worker}"
        try:
            stdin, stdout, _ = self.conn.client.exec_command(command, timeout=REQUEST_TIMEOUT_S)
            self._channel = stdout.channel
            self.pid = int(stdout.readline().strip() or 0) or None
        except (TimeoutError, OSError, EOFError, ValueError) as err:
            raise BoardError(f"{self.where}: could not start it: {err}") from err
        self.protocol = WorkerProtocol(stdin, stdout, self.where, self._log_tail)

    def put(self, local, name: str) -> str:
        """Upload a file into the worker's directory; its path on the board."""
        remote = f"{self.run_dir}/{name}"
        self.conn.put(local, remote)
        return remote

    def _log_tail(self) -> str:
        text = self.conn.run(f"tail -n 5 {quote(self.run_dir)}/worker.log 2>/dev/null", check=False).stdout
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else "its log is empty"

    def close(self) -> None:
        """Ask the worker to quit, then kill it if it is still there, and remove its directory."""
        if self.protocol is not None:
            try:
                self._channel.settimeout(QUIT_TIMEOUT_S)  # a worker stuck in a run (Ctrl-C) is killed below
                self.protocol.quit()
            except BoardError as err:
                log.debug("%s: quit: %s", self.where, err)
            self.protocol = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        kill = f"kill {self.pid} 2>/dev/null; " if self.pid else ""
        try:
            self.conn.run(f"{kill}rm -rf {quote(self.run_dir)}", check=False, timeout=60)
        except BoardError as err:  # the connection itself is gone: nothing left to clean up from here
            log.warning("%s: could not clean up %s: %s", self.where, self.run_dir, err)
