"""Deploy real models to the emulated rpi4 over SSH + RPC and check what comes back."""

import json

import numpy as np
import pytest

from edgetvm.cli import main
from edgetvm.deploy.bootstrap import ensure_runtime
from edgetvm.deploy.rpc_session import BoardSession
from edgetvm.pipeline.package import Package
from edgetvm.targets import resolve_target

# The board runs the same float32 graph as the host reference, compiled for aarch64 NEON: only the
# operation order differs (observed 6e-5 on BlazeFace's regressors).
MAX_ABS_ERROR = 1e-3


def _deploy(artifact, tmp_path, *extra):
    report = tmp_path / "report.json"
    code = main(["-q", "deploy", str(artifact), "--board", "emulated", "--repeat", "3", "-o", str(report), *extra])
    assert code == 0
    return json.loads(report.read_text()), report


def test_blazeface_on_the_board_matches_the_host_reference(emulated_board, artifacts, tmp_path):
    artifact = artifacts("blazeface", "rpi4")
    report, path = _deploy(artifact, tmp_path)
    board = report["board"]
    assert board["emulated"] is True and "not hardware timings" in board["note"]
    assert board["machine"] == "aarch64" and "bookworm" in board["os"] and board["cpu_count"] >= 1
    assert board["threads"] == 4 and "aarch64" in board["uname"]
    assert board["qemu_cpu"] == "cortex-a72"  # the program ran as the rpi4's CPU, not qemu's "max"
    assert report["target"] == "rpi4"
    assert report["artifact"]["sha256"] == Package.load(artifact).library_sha256
    latency = report["latency_ms"]
    assert latency["n"] == 3 and 0 < latency["median"] <= latency["p90"] <= latency["p99"]
    assert latency["std"] >= 0 and latency["mean"] > 0
    accuracy = report["accuracy"]
    assert accuracy["reference_runtime"] == "tflite-runtime"
    assert [o["name"] for o in accuracy["outputs"]] == ["regressors", "classificators"]
    for output in accuracy["outputs"]:
        assert output["max_abs_error"] < MAX_ABS_ERROR and output["cosine"] > 0.9999, output
    with np.load(path.with_suffix(".outputs.npz")) as outputs:
        assert outputs["regressors"].shape == (1, 896, 16)


def test_classifier_keeps_its_class_on_the_board(emulated_board, artifacts, tmp_path, ppocr_cls_path):
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=np.random.default_rng(7).random((1, 3, 48, 192), dtype=np.float32))
    report, _ = _deploy(
        artifacts("ppocr-cls", "rpi4"),
        tmp_path,
        "--inputs",
        str(inputs),
        "--reference",
        str(ppocr_cls_path),
        "--threads",
        "2",
    )
    (output,) = report["accuracy"]["outputs"]
    assert report["accuracy"]["reference_runtime"] == "onnxruntime"
    assert output["top1_agreement"] == 1.0 and output["max_abs_error"] < 1e-4
    assert report["board"]["threads"] == 2


def test_bootstrap_is_skipped_when_the_runtime_is_current(board_runtime, ssh):
    messages = []
    ensure_runtime(ssh, resolve_target("rpi4"), messages.append)
    assert messages == ["TVM runtime on emulated is up to date"]
    marker = json.loads(ssh.run(f"cat {ssh.board.remote_workdir}/venv/runtime.json").stdout)
    assert any(w.startswith("apache_tvm-0.27.0.post1") for w in marker["wheels"])


def test_rpc_server_listens_on_loopback_only_and_leaves_nothing(board_runtime, ssh, board_processes):
    with BoardSession(ssh, threads=1) as session:
        port = session.server.port
        run_dir = session.server.run_dir
        # /proc/net/tcp: local address as hex IP:port, state 0A = LISTEN.
        listening = [
            line.split()[1]
            for line in ssh.run("cat /proc/net/tcp /proc/net/tcp6").stdout.splitlines()[1:]
            if len(line.split()) > 3 and line.split()[3] == "0A" and line.split()[1].endswith(f":{port:04X}")
        ]
        assert listening == [f"0100007F:{port:04X}"]
        assert session.remote.cpu().exist
        assert board_processes(ssh, "tvm.exec.rpc_server")
    assert board_processes(ssh) == []
    assert ssh.run(f"test -e {run_dir}", check=False).exit_status != 0


def test_server_killed_mid_run_is_one_clear_error(board_runtime, ssh, artifacts, board_processes):
    from edgetvm.deploy.measure import _run_remote
    from edgetvm.errors import BoardError
    from edgetvm.pipeline.inputs import random_inputs

    package = Package.load(artifacts("blazeface", "rpi4"))
    with BoardSession(ssh, threads=1) as session:
        ssh.run(f"kill -KILL -{session.server.pgid}")
        with pytest.raises(BoardError, match="RPC server on the board stopped|connection"):
            _run_remote(
                session.remote, "emulated", session.server.alive, package, random_inputs(package.inputs), 1, None
            )
    assert board_processes(ssh) == []


def test_default_schedules_compute_correctly_on_the_board(emulated_board, artifacts, tmp_path, ops_zoo_path):
    """Every scheduled operator kind (strided/depthwise/1x1/3x3 conv, pooling, dense, odd channel counts) on
    aarch64 NEON, against onnxruntime on the host. Emulated: this proves numerics, not speed."""
    report, _ = _deploy(artifacts("ops-zoo", "rpi4"), tmp_path, "--reference", str(ops_zoo_path))
    (output,) = report["accuracy"]["outputs"]
    assert output["max_abs_error"] < 1e-4 and output["cosine"] > 0.99999 and output["top1_agreement"] == 1.0


def test_deploy_latency_budget_breaks_with_exit_5_and_keeps_the_report(emulated_board, artifacts, tmp_path):
    report = tmp_path / "report.json"
    args = ["-q", "deploy", str(artifacts("ops-zoo", "rpi4")), "--board", "emulated", "--repeat", "2"]
    code = main([*args, "-o", str(report), "--max-latency-ms", "0.0001", "--max-accuracy-drop", "0.5"])
    assert code == 5
    assert json.loads(report.read_text())["latency_ms"]["n"] == 2
