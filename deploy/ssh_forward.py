"""An SSH port forward in a child process: ``127.0.0.1:LOCAL`` here to ``127.0.0.1:PORT`` on the board.

TVM's RPC client keeps the GIL while it blocks on its socket, so the bytes of a tunnel it talks through must
be moved by another process. ``ForwardProcess`` starts ``python -m edgetvm.deploy.ssh_forward``, which opens its
own SSH connection (same board, same strict host keys), prints the local port and forwards until its standard
input closes, which happens when the parent closes it or dies.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import subprocess
import sys
import threading
from dataclasses import asdict

import paramiko

from edgetvm.deploy.boards import BoardConfig
from edgetvm.errors import BoardError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0


class ForwardProcess:
    """The child process that holds one port forward."""

    def __init__(self, board: BoardConfig, remote_port: int):
        self.board = board
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgetvm.deploy.ssh_forward"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.proc.stdin.write(json.dumps({"board": asdict(board), "remote_port": remote_port}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT_S)
        line = self.proc.stdout.readline().strip() if ready else ""
        if not line.isdigit():
            self.close()
            err = (self.proc.stderr.read() or "no output").strip().splitlines()[-1:]
            raise BoardError(f"board {board.name!r}: the SSH port forward did not start: {err[0] if err else line}")
        self.local_port = int(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _LocalForward:
    """A listening socket on 127.0.0.1 whose connections are tunnelled to the board's loopback."""

    def __init__(self, transport: paramiko.Transport, remote_port: int):
        self.transport = transport
        self.remote_port = remote_port
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.local_port = self.server.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name=f"forward-{self.local_port}", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, addr = self.server.accept()
            except OSError:
                return
            try:
                channel = self.transport.open_channel("direct-tcpip", ("127.0.0.1", self.remote_port), addr)
            except (paramiko.SSHException, OSError) as err:
                log.warning("port forward to the board's 127.0.0.1:%d failed: %s", self.remote_port, err)
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, channel), daemon=True).start()

    def _pump(self, client: socket.socket, channel: paramiko.Channel) -> None:
        try:
            while not self._closed.is_set():
                readable, _, _ = select.select([client, channel], [], [], 0.5)
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        break
                    channel.sendall(data)
                if channel in readable:
                    data = channel.recv(65536)
                    if not data:
                        break
                    client.sendall(data)
        except OSError:
            pass
        finally:
            channel.close()
            client.close()

    def close(self) -> None:
        self._closed.set()
        self.server.close()


def _serve() -> int:
    from edgetvm.deploy.ssh import SSHConnection

    request = json.loads(sys.stdin.readline())
    board = BoardConfig(**request["board"])
    try:
        conn = SSHConnection(board)
    except BoardError as err:
        print(err, file=sys.stderr)
        return 4
    forward = _LocalForward(conn.client.get_transport(), int(request["remote_port"]))
    print(forward.local_port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    forward.close()
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(_serve())
