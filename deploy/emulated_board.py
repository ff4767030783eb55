"""An emulated Raspberry Pi 4: an arm64 Debian chroot run by qemu-user, reachable only by SSH on 127.0.0.1.

No kernel boots: ``qemu-aarch64-static``, registered with binfmt_misc, runs the board's arm64 programs on the
host, and an ``sshd`` inside a chroot listens on a free port of 127.0.0.1 only. The rest of ``deploy`` talks to
it as to a real board, through a ``BoardState`` (host, port, user, key, pinned host key).

Layout under ``cache_dir()/board``::

    rootfs-bookworm-arm64.tar   the root file system, built once by debootstrap (about 7 minutes)
    debootstrap.log
    <name>/rootfs/              the board's files, kept between up and down (what is installed stays)
    <name>/id_ed25519[.pub]     the client key pair of user pi
    <name>/known_hosts          the board's ed25519 host key, pinned to [127.0.0.1]:PORT
    <name>/sshd.log             sshd's log of the current run
    <name>/state.json           present while the board is up

Everything here needs root (debootstrap, chroot, mount).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgetvm.cache import cache_dir, write_text_atomic
from edgetvm.errors import BoardError, InputError

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BOARD_PACKAGES = ("python3", "python3-venv", "openssh-server")
TARBALL_NAME = f"rootfs-{SUITE}-arm64.tar"
HOST_PACKAGES_HINT = "apt-get install debootstrap qemu-user-static binfmt-support"
DEFAULT_NAME = "rpi4-emu"
LOOPBACK = "127.0.0.1"
BOARD_USER = "pi"
BOARD_UID = 1000
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_ENTRY = "qemu-aarch64"

# (host directory, read-only) bound into the rootfs, in mounting order; unmounted in reverse.
BIND_MOUNTS = (("/proc", False), ("/sys", True), ("/dev", False), ("/dev/pts", False), ("/dev/shm", False))

SSHD_OPTIONS = (
    f"ListenAddress={LOOPBACK}",
    "AddressFamily=inet",
    f"AllowUsers={BOARD_USER}",
    "AuthenticationMethods=publickey",
    "PasswordAuthentication=no",
    "KbdInteractiveAuthentication=no",
    "UsePAM=no",
    "PermitRootLogin=no",
    "X11Forwarding=no",
    "UseDNS=no",
    "PrintMotd=no",
    "PidFile=none",
)

# The environment programs inside the board start with: nothing of the host's leaks in.
BOARD_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


# ---------------------------------------------------------------------------------------------------------------
# The state of a running board


@dataclass(frozen=True)
class BoardState:
    """How to reach a running emulated board; ``state.json`` in the board's directory.

    Parameters
    ----------
    name : str
        Board name (``rpi4-emu``).
    host, port : str, int
        Where sshd listens (always 127.0.0.1).
    user : str
        The login user (``pi``).
    key_file : Path
        Private key (ed25519) that logs in as ``user``.
    known_hosts : Path
        A known_hosts file holding only the board's host key, for strict host key checking.
    pid : int
        Process id of the board's sshd (leader of its process group).
    rootfs : Path
        The board's root directory on the host.
    started_at : str
        When sshd was started, ISO 8601 in UTC.
    """

    name: str
    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    pid: int
    rootfs: Path
    started_at: str

    def board_config(self, target: str):
        """The board as ``deploy`` sees it: a ``BoardConfig`` named ``emulated`` for ``target``."""
        from edgetvm.deploy.boards import EMULATED, BoardConfig

        return BoardConfig(
            name=EMULATED,
            host=self.host,
            port=self.port,
            user=self.user,
            key_file=str(self.key_file),
            known_hosts=str(self.known_hosts),
            target=target,
            workdir=f"/home/{self.user}/edgetvm",
            emulated=True,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {key: str(value) if isinstance(value, Path) else value for key, value in data.items()}

    def save(self, path: str | Path) -> None:
        """Write the state as JSON, atomically (a temporary file renamed over ``path``)."""
        path = Path(path)
        write_text_atomic(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> BoardState:
        """Read a state file written by ``save``.

        Raises
        ------
        BoardError
            When the file is missing, not JSON, or lacks a field.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls(
                name=str(data["name"]),
                host=str(data["host"]),
                port=int(data["port"]),
                user=str(data["user"]),
                key_file=Path(data["key_file"]),
                known_hosts=Path(data["known_hosts"]),
                pid=int(data["pid"]),
                rootfs=Path(data["rootfs"]),
                started_at=str(data["started_at"]),
            )
        except FileNotFoundError as err:
            raise BoardError(f"{path}: no board state; start the board with 'edgetvm board up'") from err
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise BoardError(f"{path}: damaged board state ({err!r}); run 'edgetvm board down'") from err


def known_hosts_line(host: str, port: int, public_key: str) -> str:
    """The known_hosts line pinning ``public_key`` (an OpenSSH ``.pub`` line) to ``host:port``.

    Raises
    ------
    BoardError
        When ``public_key`` is not ``TYPE BASE64 [COMMENT]``.
    """
    fields = public_key.split()
    if len(fields) < 2 or not fields[0].startswith(("ssh-", "ecdsa-")) or not fields[1].startswith("AAAA"):
        raise BoardError(f"not an OpenSSH public key: {public_key.strip()[:60]!r}")
    address = host if port == 22 else f"[{host}]:{port}"
    return f"{address} {fields[0]} {fields[1]}"


def ssh_argv(state: BoardState) -> list[str]:
    """The host OpenSSH client command that logs in to the board with strict host key checking."""
    return [
        "ssh",
        "-i", str(state.key_file),
        "-p", str(state.port),
        "-o", f"UserKnownHostsFile={_ssh_path(state.known_hosts)}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "IdentitiesOnly=yes",
        f"{state.user}@{state.host}",
    ]  # fmt: skip


def read_ssh_banner(host: str, port: int, timeout: float = 5.0) -> str | None:
    """The first line an SSH server sends on ``host:port`` (``SSH-2.0-...``), or None if nothing answers so."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            data = b""
            while b"\n" not in data and len(data) < 255:
                chunk = conn.recv(255)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    line = data.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    return line if line.startswith("SSH-2.0") else None


# ---------------------------------------------------------------------------------------------------------------
# Processes and mounts


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def is_board_process(pid: int, rootfs: Path) -> bool:
    """Whether ``pid`` is alive and chrooted into ``rootfs`` (guards against a reused pid after a reboot)."""
    if pid <= 0 or not pid_alive(pid):
        return False
    try:
        return os.readlink(f"/proc/{pid}/root") == str(Path(rootfs).resolve())
    except OSError:
        return False


def processes_rooted_in(rootfs: Path) -> list[int]:
    """Process ids whose root directory is ``rootfs`` or below it."""
    root = str(Path(rootfs).resolve())
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            link = os.readlink(f"/proc/{entry.name}/root")
        except OSError:
            continue
        if link == root or link.startswith(root + "/"):
            pids.append(int(entry.name))
    return pids


def mounts_under(root: Path, mounts_text: str | None = None) -> list[Path]:
    """Mount points at or below ``root``, in the order of ``/proc/mounts`` (that is, the order of mounting)."""
    if mounts_text is None:
        mounts_text = Path("/proc/mounts").read_text()
    root = Path(root).resolve()
    points = []
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1]))
        if point == root or root in point.parents:
            points.append(point)
    return points


def remove_tree(path: Path) -> None:
    """Delete a directory tree of the board cache, refusing when anything below it is mounted.

    Raises
    ------
    BoardError
        When something below ``path`` is mounted, or ``path`` is not inside ``cache_dir()/board``.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    board_root = (cache_dir() / "board").resolve()
    if board_root not in path.resolve().parents:
        raise BoardError(f"refusing to delete {path}: it is not inside {board_root}")
    mounted = mounts_under(path)
    if mounted:
        raise BoardError(f"refusing to delete {path}: {mounted[0]} is still mounted; run 'edgetvm board down'")
    # --one-file-system: a mount that appeared since the check above is still never entered.
    _run(["rm", "-rf", "--one-file-system", "--", str(path)], f"delete {path}")


def _terminate(pids: Sequence[int], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM ``pids``, then SIGKILL those still alive after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        alive = [pid for pid in pids if pid_alive(pid)]
        if not alive:
            return
        log.debug("sending %s to %s", sig.name, alive)
        for pid in alive:
            _send(pid, sig)
        _wait_until_dead(alive, wait)
    left = [pid for pid in pids if pid_alive(pid)]
    if left:
        raise BoardError(f"board processes {left} survive SIGKILL; stop them by hand, then 'edgetvm board down'")


def _wait_until_dead(pids: Sequence[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in pids:
            _reap(pid)
        if not any(pid_alive(pid) for pid in pids):
            return
        time.sleep(0.1)


def _send(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    """Collect the exit status of ``pid`` when it is our own child, so that it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _mount_binds(rootfs: Path) -> None:
    """Bind the host's /proc, /sys (read-only), /dev, /dev/pts and /dev/shm into ``rootfs``, once each."""
    root = rootfs.resolve()
    for source, readonly in BIND_MOUNTS:
        if not Path(source).is_dir():
            log.debug("host has no %s; not binding it", source)
            continue
        target = root / source.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        # A symlink inside the rootfs must never redirect a mount onto the host's own tree.
        if root not in target.resolve().parents:
            raise BoardError(f"{target} leads outside the board's root file system; run 'edgetvm board destroy'")
        if target in mounts_under(target):
            continue
        _run(["mount", "--bind", source, str(target)], f"bind-mount {source}")
        _run(["mount", "--make-private", str(target)], f"make {target} private")
        if readonly:
            _run(["mount", "-o", "remount,bind,ro", str(target)], f"make {target} read-only")


# A Raspberry Pi 4's /proc/cpuinfo entry (Cortex-A72). Under qemu-user the board's /proc is the host's, whose
# x86 /proc/cpuinfo has no ARM processor entries: ARM programs that parse it (onnxruntime's cpuinfo library)
# find no processor and crash at import. The board gets this text instead, one entry per host core.
PI4_CPUINFO_ENTRY = (
    "processor\t: {index}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n"
)
PI4_CPUINFO_MODEL = "Raspberry Pi 4 Model B (emulated: qemu-user on the host)"


def qemu_cpu_env(target) -> dict[str, str]:
    """The environment that makes qemu-user emulate ``target``'s CPU (``QEMU_CPU=cortex-a72`` for rpi4).

    Without it qemu runs the board's programs on its ``max`` CPU, with extensions the real board lacks (SVE,
    i8mm); onnxruntime then picks int8 kernels that qemu 7.2 computes wrongly (quantize_dynamic's mnist-cnn gave
    cosine 0.64 against the host, and the host's outputs as a cortex-a72). Each program started with this
    environment runs as the target's CPU; everything else on the board is unchanged.
    """
    cpu = target.llvm.get("mcpu")
    return {"QEMU_CPU": cpu} if cpu and cpu.startswith(("cortex-", "neoverse-")) else {}


def board_cpu_env(board, target) -> dict[str, str]:
    """The environment of the programs edgetvm starts on ``board`` (a ``BoardConfig``) for ``target``: on the
    emulated board ``qemu_cpu_env`` (they run as the target's CPU, and an instruction the real board lacks stops
    them as it would there), on a real board nothing."""
    return qemu_cpu_env(target) if board.emulated else {}


def emulated_cpuinfo(cores: int) -> str:
    """The board's /proc/cpuinfo: ``cores`` Cortex-A72 entries and a model line that says it is emulated."""
    entries = "\n".join(PI4_CPUINFO_ENTRY.format(index=index) for index in range(cores))
    return f"{entries}\nHardware\t: BCM2835\nModel\t\t: {PI4_CPUINFO_MODEL}\n"


def _mount_cpuinfo(rootfs: Path, state_dir: Path) -> None:
    """Bind a Raspberry Pi 4 ``cpuinfo`` (read-only) over the board's /proc/cpuinfo, once."""
    target = rootfs.resolve() / "proc" / "cpuinfo"
    if target in mounts_under(target):
        return
    source = state_dir / "cpuinfo"
    write_text_atomic(source, emulated_cpuinfo(os.cpu_count() or 1))
    _run(["mount", "--bind", str(source), str(target)], "bind-mount the board's /proc/cpuinfo")
    _run(["mount", "-o", "remount,bind,ro", str(target)], "make the board's /proc/cpuinfo read-only")


def _unmount_all(rootfs: Path) -> None:
    """Unmount everything at or below ``rootfs``, most recent first, lazily when a plain umount fails."""
    for point in reversed(mounts_under(rootfs)):
        result = subprocess.run(["umount", str(point)], check=False, capture_output=True, text=True)
        if result.returncode != 0:
            log.debug("umount %s failed (%s); unmounting lazily", point, result.stderr.strip())
            _run(["umount", "-l", str(point)], f"unmount {point}")
    left = mounts_under(rootfs)
    if left:
        raise BoardError(f"{left[0]} is still mounted after umount; unmount it by hand ('umount -l {left[0]}')")


# ---------------------------------------------------------------------------------------------------------------
# The host: tools, binfmt_misc


def check_host(need_debootstrap: bool) -> None:
    """Check that the host can run the emulated board: root, the tools, and qemu-aarch64 in binfmt_misc.

    Raises
    ------
    BoardError
        When not root, or a tool is missing (the message names the apt packages to install).
    """
    if os.geteuid() != 0:
        raise BoardError("the emulated board needs root (it uses chroot and mount); run edgetvm as root")
    tools = ["qemu-aarch64-static", "update-binfmts"] + (["debootstrap"] if need_debootstrap else [])
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise BoardError(f"{', '.join(missing)} not found on this host; install them: {HOST_PACKAGES_HINT}")
    if shutil.which("ssh-keygen") is None:
        raise BoardError("ssh-keygen not found on this host; install it: apt-get install openssh-client")
    ensure_binfmt()


def ensure_binfmt() -> None:
    """Mount binfmt_misc when it is not, and enable qemu-aarch64 in it when it is missing or disabled."""
    if not (BINFMT_DIR / "register").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], "mount binfmt_misc")
    entry = BINFMT_DIR / BINFMT_ENTRY
    if not _binfmt_enabled(entry):
        _run(["update-binfmts", "--enable", BINFMT_ENTRY], "enable qemu-aarch64 in binfmt_misc")
    if not _binfmt_enabled(entry):
        raise BoardError(f"{entry} is missing or disabled after update-binfmts; reinstall: {HOST_PACKAGES_HINT}")


def _binfmt_enabled(entry: Path) -> bool:
    try:
        return entry.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


def _provide_interpreter(rootfs: Path) -> None:
    """Copy the qemu interpreter into ``rootfs`` when binfmt_misc does not hold it open (no ``F`` flag)."""
    fields = dict(line.split(None, 1) for line in (BINFMT_DIR / BINFMT_ENTRY).read_text().splitlines() if " " in line)
    if "F" in fields.get("flags:", "") or "interpreter" not in fields:
        return
    interpreter = fields["interpreter"].strip()
    inside = rootfs / interpreter.lstrip("/")
    if not inside.exists():
        inside.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(interpreter, inside)


# ---------------------------------------------------------------------------------------------------------------
# The root file system


def rootfs_tarball() -> Path:
    """Where the packed board root file system is kept."""
    return cache_dir() / "board" / TARBALL_NAME


def build_rootfs(progress: Progress | None = None) -> Path:
    """The packed arm64 Debian root file system, built with debootstrap the first time (about 7 minutes).

    Parameters
    ----------
    progress : callable, optional
        Called with one line of text per step (debootstrap's ``I:`` lines while it runs).

    Returns
    -------
    Path
        ``cache_dir()/board/rootfs-bookworm-arm64.tar``.

    Raises
    ------
    BoardError
        When the host lacks a tool or debootstrap fails (the message gives the log file and its last line).
    """
    tarball = rootfs_tarball()
    if tarball.is_file():
        return tarball
    with _locked(tarball.parent / ".build.lock"):
        if tarball.is_file():  # built by another process while we waited for the lock
            return tarball
        check_host(need_debootstrap=True)
        work = tarball.parent / "rootfs-build"
        _unmount_all(work)  # an interrupted debootstrap can leave /proc and /sys mounted
        remove_tree(work)
        started = time.monotonic()
        _say(progress, f"building the board root file system with debootstrap into {work} (about 7 minutes, once)")
        try:
            _run_debootstrap(work, tarball.parent / "debootstrap.log", progress)
        finally:
            _unmount_all(work)
        _strip_rootfs(work)
        _say(progress, f"packing {tarball.name}")
        _pack_rootfs(work, tarball)
        remove_tree(work)
        log.info("built %s in %.0f s", tarball, time.monotonic() - started)
    return tarball


def _run_debootstrap(target: Path, log_path: Path, progress: Progress | None) -> None:
    argv = [
        "debootstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(BOARD_PACKAGES)}",
        SUITE, str(target), DEBIAN_MIRROR,
    ]  # fmt: skip
    _provide_interpreter(target)
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    last = ""
    with open(log_path, "w") as log_file:
        log_file.write(f"$ {shlex.join(argv)}\n")
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                log_file.write(line)
                last = line.strip() or last
                if line.startswith("I: ") and progress is not None:
                    progress(line[3:].strip())
    if proc.returncode != 0:
        raise BoardError(f"debootstrap failed (exit {proc.returncode}): {last}; full log: {log_path}")


def _strip_rootfs(rootfs: Path) -> None:
    """Drop what must not be shared by every board made from the tarball (host keys), or is dead weight."""
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def _pack_rootfs(rootfs: Path, tarball: Path) -> None:
    partial = tarball.with_name(tarball.name + ".partial")
    try:
        _run(
            ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(rootfs), "-cf", str(partial), "."],
            f"pack {rootfs}",
        )
        os.replace(partial, tarball)
    finally:
        partial.unlink(missing_ok=True)


def _extract_rootfs(tarball: Path, rootfs: Path) -> None:
    partial = rootfs.with_name(rootfs.name + ".partial")
    remove_tree(partial)
    partial.mkdir(parents=True)
    _run(
        ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tarball), "-C", str(partial)],
        f"extract {tarball}",
    )
    os.rename(partial, rootfs)


# ---------------------------------------------------------------------------------------------------------------
# The board


class EmulatedBoard:
    """An emulated Raspberry Pi 4 (arm64 Debian bookworm under qemu-user) reachable by SSH on 127.0.0.1.

    Parameters
    ----------
    name : str
        Board name; its files live in ``cache_dir()/board/<name>/``.

    Raises
    ------
    InputError
        When ``name`` is not a plain file name.
    """

    def __init__(self, name: str = DEFAULT_NAME) -> None:
        if not _NAME_RE.fullmatch(name):
            raise InputError(f"board name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        self.name = name
        self.state_dir = cache_dir() / "board" / name
        self._sshd: subprocess.Popen[bytes] | None = None

    @property
    def rootfs(self) -> Path:
        return self.state_dir / "rootfs"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def key_file(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def known_hosts_file(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def sshd_log(self) -> Path:
        return self.state_dir / "sshd.log"

    def up(self, progress: Progress | None = None) -> BoardState:
        """Start the board (building and extracting its root file system first if needed); idempotent.

        Raises
        ------
        BoardError
            When the host cannot run the board or sshd does not answer within 60 s.
        """
        with self._locked():
            state = self._live_state()
            if state is not None:
                _mount_cpuinfo(self.rootfs, self.state_dir)  # a board started before the cpuinfo existed
                return state
            self._stop()
            try:
                check_host(need_debootstrap=not self.rootfs.is_dir() and not rootfs_tarball().is_file())
                if not self.rootfs.is_dir():
                    tarball = build_rootfs(progress)
                    _say(progress, f"extracting {tarball.name} into {self.rootfs}")
                    _extract_rootfs(tarball, self.rootfs)
                _mount_binds(self.rootfs)
                _mount_cpuinfo(self.rootfs, self.state_dir)
                self._prepare_rootfs()
                return self._start_sshd(progress)
            except BaseException:
                self._stop()
                raise

    def down(self) -> None:
        """Stop every process of the board, unmount its binds and forget its state; idempotent."""
        with self._locked():
            self._stop()

    def status(self) -> BoardState | None:
        """The state of the running board, or None; a stale state (dead sshd, reboot) is cleaned up."""
        with self._locked():
            state = self._live_state()
            if state is None and (self.state_file.exists() or mounts_under(self.rootfs)):
                log.info("board %s: stale state, cleaning up", self.name)
                self._stop()
            return state

    def destroy(self) -> None:
        """Stop the board and delete its directory: root file system, keys, logs. The tarball stays."""
        with self._locked():
            self._stop()
            remove_tree(self.rootfs)
            remove_tree(self.state_dir)

    def ssh_command(self) -> list[str]:
        """The argv of a host ``ssh`` command that logs in to the running board as ``pi``.

        Raises
        ------
        BoardError
            When the board is not up.
        """
        state = self.status()
        if state is None:
            raise BoardError(f"board {self.name} is not up; start it with 'edgetvm board up'")
        return ssh_argv(state)

    # -- internals ------------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with _locked(self.state_dir / ".lock"):
            yield

    def _live_state(self) -> BoardState | None:
        if not self.state_file.exists():
            return None
        try:
            state = BoardState.load(self.state_file)
        except BoardError as err:
            log.info("board %s: %s", self.name, err)
            return None
        if not is_board_process(state.pid, self.rootfs):
            return None
        return state if read_ssh_banner(state.host, state.port) else None

    def _stop(self) -> None:
        state = None
        if self.state_file.exists():
            try:
                state = BoardState.load(self.state_file)
            except BoardError as err:
                log.info("board %s: %s", self.name, err)
        if state is not None and is_board_process(state.pid, self.rootfs):
            # sshd was started as a session (and group) leader: its group holds the per-connection children.
            try:
                os.killpg(state.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _terminate(processes_rooted_in(self.rootfs))
        if self._sshd is not None:
            self._sshd.poll()
            self._sshd = None
        _unmount_all(self.rootfs)
        self.state_file.unlink(missing_ok=True)

    def _prepare_rootfs(self) -> None:
        """Client key, user pi with its authorized key, host keys, sshd's privilege separation directory."""
        _provide_interpreter(self.rootfs)
        if not self.key_file.exists():
            _run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"edgetvm@{self.name}", "-f", str(self.key_file)],
                "generate the client key",
            )
        _ensure_user(self.rootfs)
        _install_authorized_key(self.rootfs, self.key_file.with_suffix(".pub").read_text())
        if not (self.rootfs / "etc/ssh/ssh_host_ed25519_key").exists():
            _run(["ssh-keygen", "-A", "-f", str(self.rootfs)], "generate the board's host keys")
        privsep = self.rootfs / "run/sshd"
        privsep.mkdir(parents=True, exist_ok=True)
        os.chown(privsep, 0, 0)
        privsep.chmod(0o755)

    def _start_sshd(self, progress: Progress | None) -> BoardState:
        port = _free_port()
        argv = ["chroot", str(self.rootfs), "/usr/sbin/sshd", "-D", "-e", "-p", str(port)]
        argv += [arg for option in SSHD_OPTIONS for arg in ("-o", option)]
        _say(progress, f"starting sshd on {LOOPBACK}:{port}")
        started = time.monotonic()
        with open(self.sshd_log, "wb") as sshd_log:
            self._sshd = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=sshd_log, stderr=subprocess.STDOUT,
                start_new_session=True, env=BOARD_ENV,
            )  # fmt: skip
        self._wait_for_banner(self._sshd, port)
        log.info("board %s: sshd answered after %.1f s", self.name, time.monotonic() - started)
        host_key = (self.rootfs / "etc/ssh/ssh_host_ed25519_key.pub").read_text()
        write_text_atomic(self.known_hosts_file, known_hosts_line(LOOPBACK, port, host_key) + "\n")
        state = BoardState(
            name=self.name,
            host=LOOPBACK,
            port=port,
            user=BOARD_USER,
            key_file=self.key_file,
            known_hosts=self.known_hosts_file,
            pid=self._sshd.pid,
            rootfs=self.rootfs,
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        state.save(self.state_file)
        return state

    def _wait_for_banner(self, proc: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BoardError(
                    f"sshd of board {self.name} exited with code {proc.returncode}: {_last_line(self.sshd_log)}; "
                    f"full log: {self.sshd_log}"
                )
            if read_ssh_banner(LOOPBACK, port):
                return
            time.sleep(0.25)
        raise BoardError(
            f"sshd of board {self.name} gave no SSH banner on {LOOPBACK}:{port} within {START_TIMEOUT_S:.0f} s; "
            f"see {self.sshd_log}"
        )


def _ensure_user(rootfs: Path) -> None:
    """Create user pi (uid 1000, home /home/pi, bash) with the board's own useradd, once, and unlock it."""
    if _passwd_entry(rootfs, BOARD_USER) is None:
        _run(
            ["chroot", str(rootfs), "/usr/sbin/useradd", "--create-home", "--user-group",
             "--uid", str(BOARD_UID), "--shell", "/bin/bash", BOARD_USER],
            f"create user {BOARD_USER} in the board",
        )  # fmt: skip
    _unlock_account(rootfs / "etc/shadow", BOARD_USER)


def _unlock_account(shadow: Path, user: str) -> None:
    """Replace a locked password ('!') by '*' (no password, not locked).

    Without PAM, sshd refuses every login, keys included, to an account whose password starts with '!'
    ("User pi not allowed because account is locked"); useradd creates accounts that way.
    """
    lines = shadow.read_text().splitlines(keepends=True)
    for index, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == user and len(fields) > 1 and fields[1].startswith("!"):
            fields[1] = "*"
            lines[index] = ":".join(fields)
            before = shadow.stat()
            write_text_atomic(shadow, "".join(lines))
            os.chown(shadow, before.st_uid, before.st_gid)
            shadow.chmod(before.st_mode & 0o7777)
            return


def _install_authorized_key(rootfs: Path, public_key: str) -> None:
    entry = _passwd_entry(rootfs, BOARD_USER)
    if entry is None:
        raise BoardError(f"user {BOARD_USER} is missing from {rootfs}/etc/passwd; run 'edgetvm board destroy'")
    uid, gid, home = int(entry[2]), int(entry[3]), entry[5]
    ssh_dir = rootfs / home.lstrip("/") / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(public_key.strip() + "\n")
    for path, mode in ((ssh_dir, 0o700), (keys, 0o600)):
        os.chown(path, uid, gid)
        path.chmod(mode)


def _passwd_entry(rootfs: Path, user: str) -> list[str] | None:
    for line in (rootfs / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) == 7 and fields[0] == user:
            return fields
    return None


# ---------------------------------------------------------------------------------------------------------------
# Small helpers


def _say(progress: Progress | None, message: str) -> None:
    log.info(message)
    if progress is not None:
        progress(message)


def _run(argv: Sequence[str], what: str) -> str:
    """Run a host command; a failure becomes a BoardError naming what failed and the command's last line."""
    try:
        result = subprocess.run(list(argv), check=False, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise BoardError(f"{what}: {argv[0]} is not installed on this host") from err
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit code {result.returncode}"
        raise BoardError(f"{what} failed: {reason} (command: {shlex.join(argv)})")
    return result.stdout


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed): one process at a time changes a board."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def _ssh_path(path: Path) -> str:
    """A path as an ``ssh -o`` value: quoted when it holds a space, which ssh would split on."""
    text = str(path)
    return f'"{text}"' if any(ch.isspace() for ch in text) else text
