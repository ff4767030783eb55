"""Board farms: a board registered with TVM's RPC tracker is taken by key."""

import json
import subprocess
import sys
import time

import pytest

from edgetvm.cli import main


@pytest.fixture()
def tracker(free_port):
    port = free_port
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tvm.exec.rpc_tracker",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--port-end",
            str(port + 1),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def _wait_for_key(tracker: str, key: str, timeout: float = 180.0) -> None:
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


def test_deploy_through_a_tracker(tracker, board_runtime, ssh, artifacts, tmp_path, board_processes):
    # The emulated board shares the host's loopback, so its server can register with a tracker on 127.0.0.1.
    workdir = ssh.board.remote_workdir
    pgid = int(
        ssh.run(
            f"mkdir -p {workdir}/farm && cd {workdir}/farm || exit 1; setsid nohup {workdir}/venv/bin/python -m "
            f"tvm.exec.rpc_server --host 127.0.0.1 --port 9190 --port-end 9199 --tracker {tracker} --key rpi4-farm "
            "> server.log 2>&1 < /dev/null & echo $!"
        ).stdout
    )
    try:
        _wait_for_key(tracker, "rpi4-farm")
        report = tmp_path / "r.json"
        code = main(
            [
                "-q",
                "deploy",
                str(artifacts("blazeface", "rpi4")),
                "--rpc-tracker",
                tracker,
                "--rpc-key",
                "rpi4-farm",
                "--repeat",
                "2",
                "-o",
                str(report),
            ]
        )
        assert code == 0
        data = json.loads(report.read_text())
        assert data["board"]["name"] == f"tracker {tracker} key rpi4-farm"
        assert data["latency_ms"]["n"] == 2
        assert all(o["max_abs_error"] < 1e-3 for o in data["accuracy"]["outputs"])
        assert (
            main(["deploy", str(artifacts("blazeface", "rpi4")), "--rpc-tracker", tracker, "--rpc-key", "no-such-key"])
            == 4
        )
    finally:
        ssh.run(f"kill -KILL -{pgid}; rm -rf {workdir}/farm", check=False)
    assert board_processes(ssh) == []
