"""Board inventory: ``boards.toml`` naming real boards, with the emulated board as the fallback.

Example ``~/.config/edgetvm/boards.toml``::

    [boards.kitchen-pi]
    host = "kitchen-pi"          # an IP, a DNS name, or a Host alias of ~/.ssh/config
    user = "pi"
    key_file = "~/.ssh/id_ed25519"   # omit to use ssh-agent / ~/.ssh/config's IdentityFile
    known_hosts = "~/.ssh/known_hosts"
    target = "rpi4"
    workdir = "/home/pi/edgetvm"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from edgetvm.errors import BoardError, InputError

EMULATED = "emulated"


@dataclass(frozen=True)
class BoardConfig:
    """How to reach one board over SSH, and what it is."""

    name: str
    host: str
    target: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    known_hosts: str | None = None
    workdir: str | None = None
    emulated: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise InputError(f"board {self.name!r}: port must be 1..65535, got {self.port!r}")

    @property
    def remote_workdir(self) -> str:
        return self.workdir or f"/home/{self.user or 'pi'}/edgetvm"

    def resolved(self) -> BoardConfig:
        """Apply ``~/.ssh/config`` (HostName, Port, User, IdentityFile) for a Host alias."""
        import paramiko

        config_path = Path.home() / ".ssh" / "config"
        if self.emulated or not config_path.is_file():
            return self
        ssh_config = paramiko.SSHConfig.from_path(str(config_path))
        entry = ssh_config.lookup(self.host)
        identity = (entry.get("identityfile") or [None])[0]
        return replace(
            self,
            host=entry.get("hostname", self.host),
            port=int(entry.get("port", self.port)) if self.port == 22 else self.port,
            user=self.user or entry.get("user"),
            key_file=self.key_file or identity,
        )


def boards_file(option: str | None = None) -> Path:
    """``--boards``, else ``$EDGETVM_BOARDS``, else ``$XDG_CONFIG_HOME/edgetvm/boards.toml``."""
    if option:
        return Path(option).expanduser()
    if os.environ.get("EDGETVM_BOARDS"):
        return Path(os.environ["EDGETVM_BOARDS"]).expanduser()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "edgetvm" / "boards.toml"


_FIELDS = {"host", "port", "user", "key_file", "known_hosts", "target", "workdir"}


def load_boards(path: Path, must_exist: bool = False) -> dict[str, BoardConfig]:
    """Boards of a ``boards.toml``; an absent default file means no real boards."""
    if not path.is_file():
        if must_exist:
            raise InputError(f"boards file {path}: no such file")
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"boards file {path}: not valid TOML: {err}") from err
    boards = {}
    for name, entry in (data.get("boards") or {}).items():
        if not isinstance(entry, dict):
            raise InputError(f"boards file {path}: [boards.{name}] must be a table")
        unknown = set(entry) - _FIELDS
        missing = {"host", "target"} - set(entry)
        if unknown or missing:
            raise InputError(
                f"boards file {path}: [boards.{name}] has unknown {sorted(unknown)} / missing {sorted(missing)} "
                f"field(s); allowed: {sorted(_FIELDS)}"
            )
        if name == EMULATED:
            raise InputError(f"boards file {path}: the name {EMULATED!r} is reserved for the emulated board")
        boards[name] = BoardConfig(name=name, **entry)
    return boards


def select_board(name: str | None, target: str, boards: dict[str, BoardConfig]) -> BoardConfig | None:
    """The board to use: the one named, else the first configured for ``target``.

    Returns ``None`` when the emulated board is to be used (named ``emulated``, or nothing configured).

    Raises
    ------
    BoardError
        When the named board is not configured.
    """
    if name == EMULATED:
        return None
    if name:
        if name not in boards:
            known = ", ".join([*boards, EMULATED])
            raise BoardError(f"board {name!r} is not in the boards file; known boards: {known}")
        return boards[name].resolved()
    for board in boards.values():
        if board.target == target:
            return board.resolved()
    return None
