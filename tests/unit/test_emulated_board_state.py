"""The parts of the emulated board that need no board: state files, known_hosts lines, stale state, mounts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from edgetvm.deploy.emulated_board import (
    BoardState,
    EmulatedBoard,
    is_board_process,
    known_hosts_line,
    mounts_under,
    pid_alive,
    remove_tree,
    ssh_argv,
)
from edgetvm.errors import BoardError, InputError

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFvsrxgQa2R0z6mONhA9aE2aHK1l7bws1OhSWU2Gvm2n root@vm\n"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGETVM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def make_state(directory: Path, pid: int, port: int = 40123) -> BoardState:
    return BoardState(
        name="t",
        host="127.0.0.1",
        port=port,
        user="pi",
        key_file=directory / "id_ed25519",
        known_hosts=directory / "known_hosts",
        pid=pid,
        rootfs=directory / "rootfs",
        started_at="2026-01-01T00:00:00+00:00",
    )


def test_state_round_trip(tmp_path: Path) -> None:
    state = make_state(tmp_path, pid=1234)
    state.save(tmp_path / "state.json")
    assert BoardState.load(tmp_path / "state.json") == state
    assert not list(tmp_path.glob(".state.json.tmp-*")), "the temporary file of the atomic write is left behind"


def test_state_file_fields(tmp_path: Path) -> None:
    make_state(tmp_path, pid=1234).save(tmp_path / "state.json")
    data = json.loads((tmp_path / "state.json").read_text())
    assert set(data) == {"name", "host", "port", "user", "key_file", "known_hosts", "pid", "rootfs", "started_at"}
    assert data["port"] == 40123 and data["pid"] == 1234
    assert data["key_file"] == str(tmp_path / "id_ed25519")


def test_damaged_state_is_a_board_error(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    data = make_state(tmp_path, pid=1).to_json()
    del data["port"]
    path.write_text(json.dumps(data))
    with pytest.raises(BoardError, match="port"):
        BoardState.load(path)
    path.write_text("{not json")
    with pytest.raises(BoardError, match="damaged"):
        BoardState.load(path)
    with pytest.raises(BoardError, match="board up"):
        BoardState.load(tmp_path / "missing.json")


def test_known_hosts_line_pins_host_and_port() -> None:
    line = known_hosts_line("127.0.0.1", 40123, HOST_KEY)
    assert line == "[127.0.0.1]:40123 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFvsrxgQa2R0z6mONhA9aE2aHK1l7bws1OhSWU2Gvm2n"
    assert known_hosts_line("127.0.0.1", 22, HOST_KEY).startswith("127.0.0.1 ssh-ed25519 AAAA")


@pytest.mark.parametrize("bad", ["", "ssh-ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----", "hello world"])
def test_known_hosts_line_rejects_what_is_not_a_public_key(bad: str) -> None:
    with pytest.raises(BoardError):
        known_hosts_line("127.0.0.1", 40123, bad)


def test_ssh_argv_is_strict(tmp_path: Path) -> None:
    argv = ssh_argv(make_state(tmp_path, pid=1))
    assert argv[0] == "ssh" and argv[-1] == "pi@127.0.0.1"
    assert argv[argv.index("-p") + 1] == "40123"
    assert argv[argv.index("-i") + 1] == str(tmp_path / "id_ed25519")
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in argv
    assert "StrictHostKeyChecking=yes" in argv


def test_dead_and_foreign_pids_are_not_the_board(tmp_path: Path) -> None:
    pid = dead_pid()
    assert not pid_alive(pid)
    assert pid_alive(os.getpid())
    assert not is_board_process(pid, tmp_path / "rootfs")
    # Alive but not chrooted into the rootfs: a pid reused after a reboot.
    assert not is_board_process(os.getpid(), tmp_path / "rootfs")


def test_stale_state_is_cleaned_up(cache: Path) -> None:
    board = EmulatedBoard("t")
    make_state(board.state_dir, pid=dead_pid()).save(board.state_file)
    assert board.status() is None
    assert not board.state_file.exists()
    board.down()  # idempotent on a board that is already down
    assert board.status() is None


def test_ssh_command_needs_a_running_board(cache: Path) -> None:
    board = EmulatedBoard("t")
    make_state(board.state_dir, pid=dead_pid()).save(board.state_file)
    with pytest.raises(BoardError, match="not up"):
        board.ssh_command()


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 65])
def test_board_name_must_be_a_plain_name(cache: Path, name: str) -> None:
    with pytest.raises(InputError):
        EmulatedBoard(name)


def test_mounts_under_sees_only_that_tree() -> None:
    mounts = (
        "proc /proc proc rw 0 0\n"
        "proc /srv/board/rootfs/proc proc rw 0 0\n"
        "devpts /srv/board/rootfs/dev/pts devpts rw 0 0\n"
        "tmpfs /srv/board/rootfs-other tmpfs rw 0 0\n"
        "tmpfs /srv/my\\040board/rootfs/dev tmpfs rw 0 0\n"
    )
    assert mounts_under(Path("/srv/board/rootfs"), mounts) == [
        Path("/srv/board/rootfs/proc"),
        Path("/srv/board/rootfs/dev/pts"),
    ]
    assert mounts_under(Path("/srv/my board/rootfs"), mounts) == [Path("/srv/my board/rootfs/dev")]
    assert mounts_under(Path("/srv/elsewhere"), mounts) == []


def test_remove_tree_stays_inside_the_board_cache(cache: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(BoardError, match="not inside"):
        remove_tree(outside)
    assert outside.is_dir()
    inside = cache / "board" / "t" / "rootfs"
    (inside / "etc").mkdir(parents=True)
    remove_tree(inside)
    assert not inside.exists()
