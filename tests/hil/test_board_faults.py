"""Fault cases: one clear line, a fixed non-zero exit code, nothing left running."""

import subprocess

import pytest

from edgetvm.cli import main
from edgetvm.deploy.ssh import SSHConnection


def _boards_file(tmp_path, **fields):
    lines = ["[boards.pi]", 'target = "rpi4"'] + [
        f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in fields.items()
    ]
    path = tmp_path / "boards.toml"
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return path


def _emulated_boards_file(tmp_path, state, **overrides):
    """A boards file naming the emulated board as ``pi``, with some fields changed."""
    fields = {
        "host": "127.0.0.1",
        "port": state.port,
        "user": "pi",
        "key_file": str(state.key_file),
        "known_hosts": str(state.known_hosts),
        **overrides,
    }
    return _boards_file(tmp_path, **fields)


def _new_key(tmp_path, name: str):
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def _deploy_error(capsys, artifact, boards, *extra) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["-q", "deploy", str(artifact), "--boards", str(boards), "--board", "pi", "--repeat", "1", *extra])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return code, err


def test_unreachable_board(tmp_path, capsys, artifacts, free_port):
    boards = _boards_file(tmp_path, host="127.0.0.1", port=free_port, user="pi")
    code, err = _deploy_error(capsys, artifacts("blazeface", "rpi4"), boards)
    assert code == 4 and "unreachable" in err


def test_wrong_key(tmp_path, capsys, artifacts, emulated_board):
    boards = _emulated_boards_file(tmp_path, emulated_board, key_file=str(_new_key(tmp_path, "other_key")))
    code, err = _deploy_error(capsys, artifacts("blazeface", "rpi4"), boards)
    assert code == 4 and "authentication failed" in err


def test_unknown_host_key_is_refused_then_recorded_on_request(
    tmp_path, capsys, artifacts, emulated_board, board_config
):
    known = tmp_path / "known_hosts"
    known.write_text("")
    boards = _emulated_boards_file(tmp_path, emulated_board, known_hosts=str(known))
    code, err = _deploy_error(capsys, artifacts("blazeface", "rpi4"), boards)
    assert code == 4 and "unknown host key" in err and "--trust-new-host" in err
    from dataclasses import replace

    with SSHConnection(replace(board_config, known_hosts=str(known)), trust_new_host=True) as conn:
        assert conn.run("uname -m").stdout.strip() == "aarch64"
    assert f"[127.0.0.1]:{emulated_board.port} ssh-ed25519" in known.read_text()
    with SSHConnection(replace(board_config, known_hosts=str(known))) as conn:  # now known: strict check passes
        assert conn.run("true").exit_status == 0


def test_changed_host_key_is_refused(tmp_path, capsys, artifacts, emulated_board):
    other = _new_key(tmp_path, "k")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{emulated_board.port} {(other.with_suffix('.pub')).read_text().strip()}\n")
    boards = _emulated_boards_file(tmp_path, emulated_board, known_hosts=str(known))
    code, err = _deploy_error(capsys, artifacts("blazeface", "rpi4"), boards)
    assert code == 4 and "does not match" in err


@pytest.mark.parametrize("model, target", [("blazeface", "x86"), ("ppocr-cls", "rpi3")])
def test_artifact_for_another_machine_is_refused_before_upload(
    tmp_path, capsys, artifacts, emulated_board, ssh, board_processes, model, target
):
    before = ssh.run("ls /home/pi/edgetvm/run 2>/dev/null | wc -l").stdout
    capsys.readouterr()
    assert main(["deploy", str(artifacts(model, target)), "--board", "emulated"]) == 2
    err = capsys.readouterr().err
    assert f"built for {target}" in err and len(err.strip().splitlines()) == 1
    assert ssh.run("ls /home/pi/edgetvm/run 2>/dev/null | wc -l").stdout == before
    assert board_processes(ssh) == []
