"""SSH to a board with paramiko: strict host keys, commands, file upload and a local port forward."""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

import paramiko

from edgetvm.deploy.boards import BoardConfig
from edgetvm.errors import BoardError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str


class _RecordNewHost(paramiko.MissingHostKeyPolicy):
    """``--trust-new-host``: accept an unknown key and write it to the known_hosts file."""

    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        client.save_host_keys(str(self.known_hosts))
        log.warning("recorded the new host key of %s (%s) in %s", hostname, key.get_name(), self.known_hosts)


class SSHConnection:
    """One SSH connection to a board. Use as a context manager."""

    def __init__(self, board: BoardConfig, trust_new_host: bool = False, timeout: float = CONNECT_TIMEOUT_S):
        self.board = board
        self.client = paramiko.SSHClient()
        known_hosts = Path(board.known_hosts or "~/.ssh/known_hosts").expanduser()
        if known_hosts.is_file():
            self.client.load_host_keys(str(known_hosts))
        self.client.set_missing_host_key_policy(
            _RecordNewHost(known_hosts) if trust_new_host else paramiko.RejectPolicy()
        )
        self._known_hosts = known_hosts
        self._forwards: list = []
        self._connect(timeout)

    def _connect(self, timeout: float) -> None:
        board = self.board
        where = f"board {board.name!r} ({board.user or ''}@{board.host}:{board.port})"
        key_file = str(Path(board.key_file).expanduser()) if board.key_file else None
        try:
            self.client.connect(
                board.host,
                port=board.port,
                username=board.user,
                key_filename=key_file,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                allow_agent=key_file is None,
                look_for_keys=key_file is None,
            )
        except paramiko.BadHostKeyException as err:
            raise BoardError(
                f"{where}: its host key does not match {self._known_hosts} (key changed or another machine): "
                "check the board and remove the stale key if the change is expected"
            ) from err
        except paramiko.SSHException as err:
            if "not found in known_hosts" in str(err):
                raise BoardError(
                    f"{where}: unknown host key (not in {self._known_hosts}); verify the board and rerun with "
                    "--trust-new-host to record it"
                ) from err
            if isinstance(err, paramiko.AuthenticationException):
                raise BoardError(f"{where}: authentication failed: check user and key_file in the boards file") from err
            raise BoardError(f"{where}: SSH failed: {err}") from err
        except (OSError, EOFError) as err:
            raise BoardError(
                f"{where}: unreachable ({err or type(err).__name__}); is it on and listening for SSH?"
            ) from err

    def __enter__(self) -> SSHConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for forward in self._forwards:
            forward.close()
        self._forwards.clear()
        self.client.close()

    def run(self, command: str, timeout: float = 120.0, check: bool = True) -> CommandResult:
        """Run a shell command on the board; raise ``BoardError`` on non-zero exit when ``check``."""
        log.debug("%s$ %s", self.board.name, command)
        try:
            _, stdout, stderr = self.client.exec_command(command, timeout=timeout)
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            status = stdout.channel.recv_exit_status()
        except TimeoutError as exc:
            raise BoardError(f"board {self.board.name!r}: command timed out after {timeout:.0f} s: {command}") from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise BoardError(f"board {self.board.name!r}: connection lost during: {command} ({exc})") from exc
        if check and status != 0:
            last = (err.strip() or out.strip()).splitlines()[-1:] or ["no output"]
            raise BoardError(f"board {self.board.name!r}: `{command}` exited {status}: {last[0]}")
        return CommandResult(status, out, err)

    def put(self, local: Path, remote: str) -> None:
        """Upload a file (to a temporary name, then renamed, so a partial file never has the final name)."""
        try:
            with self.client.open_sftp() as sftp:
                sftp.put(str(local), remote + ".part")
                sftp.posix_rename(remote + ".part", remote)
        except (OSError, paramiko.SSHException) as err:
            raise BoardError(f"board {self.board.name!r}: uploading {local.name} to {remote} failed: {err}") from err

    def forward(self, remote_port: int) -> int:
        """Forward a local port on 127.0.0.1 to ``127.0.0.1:remote_port`` on the board; returns the local port.

        The tunnel runs in a child process with its own SSH connection: TVM's RPC client holds the GIL
        while it waits on its socket, so a tunnel pumped by a thread of this process would deadlock.
        """
        from edgetvm.deploy.ssh_forward import ForwardProcess

        forward = ForwardProcess(self.board, remote_port)
        self._forwards.append(forward)
        return forward.local_port


def quote(value: str) -> str:
    return shlex.quote(value)
