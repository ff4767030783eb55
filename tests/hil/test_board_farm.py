"""Board farms: a board registered with TVM's RPC tracker is taken by key."""

import json

from edgetvm.cli import main


def test_deploy_through_a_tracker(tracker, board_runtime, ssh, artifacts, tmp_path, board_processes, board_on_tracker):
    # The emulated board shares the host's loopback, so its server can register with a tracker on 127.0.0.1.
    with board_on_tracker(ssh, tracker, "rpi4-farm"):
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
    assert board_processes(ssh) == []
