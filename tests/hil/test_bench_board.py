"""``edgetvm bench --target rpi4 --board emulated``: every variant, baselines included, runs on the board.

Repeats are tiny: the board is slow and shared. No timed asserts; latencies are checked for consistency only.
"""

import json
from importlib import metadata

import pytest

from edgetvm.cli import main
from edgetvm.pipeline.bundled_models import BUNDLED

# The board runs the same float32 graphs as the host reference, compiled for aarch64: only the order of
# operations differs.
MAX_FLOAT_ERROR = 1e-3


@pytest.fixture(scope="module")
def mnist_bench(emulated_board, board_runtime, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-mnist") / "out"
    argv = ["-q", "bench", str(BUNDLED["mnist-cnn"].path()), "--target", "rpi4", "--board", "emulated"]
    argv += ["--schemes", "none", "--repeat", "2", "--warmup", "0", "--settle-ms", "0", "--json", "-o", str(out)]
    return main(argv), out


def _rows(report):
    return {(row["runtime"], row["variant"]): row for row in report["results"]}


def test_every_variant_ran_on_the_board(mnist_bench, board_processes, ssh, capsys):
    code, out = mnist_bench
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    rows = _rows(report)
    assert list(rows) == [
        ("onnxruntime", "float"),
        ("onnxruntime", "quantize_dynamic"),
        ("onnxruntime", "quantize_static"),
        ("edgetvm", "none"),
    ]
    for (runtime, _), row in rows.items():
        assert row["error"] is None, row
        latency = row["latency_ms"]
        assert latency["n"] == 2 == len(row["samples_ms"]) and 0 < latency["median"] <= latency["p90"]
        where = row["details"]["where"]
        if runtime == "edgetvm":
            assert where == "board emulated, TVM RPC"
        else:  # the worker's own Python said it is an aarch64 machine
            assert where == "board emulated (aarch64), baseline worker"
            assert row["details"]["intra_op_num_threads"] == 4
    assert report["baseline"] == {"runtime": "onnxruntime", "variant": "float"}
    assert rows[("onnxruntime", "float")]["ratio_to_baseline"] == 1.0
    assert not board_processes(ssh, "baseline_worker")  # the worker is gone with the bench
    assert not ssh.run("ls -d ~/edgetvm/run/bench-* 2>/dev/null", check=False).stdout.strip()


def test_every_row_is_compared_with_the_hosts_float_run(mnist_bench):
    _, out = mnist_bench
    rows = _rows(json.loads((out / "bench.json").read_text()))
    for row in rows.values():
        assert row["accuracy"]["reference"] == "onnxruntime float on the host"
    for key in (("onnxruntime", "float"), ("edgetvm", "none")):
        assert rows[key]["accuracy"]["max_abs_error"] < MAX_FLOAT_ERROR and rows[key]["accuracy"]["top1_agreement"] == 1
    # int8 baselines keep the class; quantize_dynamic did not on qemu's default CPU (see qemu_cpu_env)
    for key in (("onnxruntime", "quantize_dynamic"), ("onnxruntime", "quantize_static")):
        assert rows[key]["accuracy"]["top1_agreement"] == 1.0 and rows[key]["accuracy"]["min_cosine"] > 0.99, key


def test_the_report_says_the_board_is_emulated(mnist_bench):
    _, out = mnist_bench
    report = json.loads((out / "bench.json").read_text())
    board = report["board"]
    assert board["emulated"] is True and "not hardware timings" in board["note"]
    assert board["name"] == "emulated" and board["machine"] == "aarch64" and board["qemu_cpu"] == "cortex-a72"
    assert "Raspberry Pi 4" in board["cpu"] and "emulated" in board["cpu"]
    assert board["threads"] == 4 and board["cores"] >= 1
    assert board["versions"]["onnxruntime"] == metadata.version("onnxruntime")
    assert board["versions"]["tflite-runtime"] == metadata.version("tflite-runtime")
    assert board["versions"]["tvm"].startswith("0.27")
    assert report["host"]["role"].startswith("built the variants")
    text = (out / "bench.md").read_text()
    assert "EMULATED (qemu-user on the host: not hardware timings)" in text
    assert "**Emulated board**" in text
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_a_tflite_model_runs_in_tflite_runtime_on_the_board_and_gates_apply(
    emulated_board, board_runtime, blazeface_path, tmp_path, capsys
):
    out, junit = tmp_path / "out", tmp_path / "junit.xml"
    argv = ["bench", str(blazeface_path), "--target", "rpi4", "--board", "emulated", "--schemes", "none"]
    argv += ["--repeat", "1", "--warmup", "0", "--settle-ms", "0", "-o", str(out)]
    code = main(["-q", *argv, "--max-latency-ms", "0.001", "--junit", str(junit)])
    assert code == 5  # no board runs BlazeFace in a microsecond: the budget is broken, the report still written
    printed = capsys.readouterr()
    assert "**Emulated board**" in printed.out and "| tflite-runtime | float |" in printed.out
    assert "edgetvm none: median latency" in printed.err and "(budget 0.001 ms)" in printed.err
    rows = _rows(json.loads((out / "bench.json").read_text()))
    assert list(rows) == [("tflite-runtime", "float"), ("edgetvm", "none")]
    tflite = rows[("tflite-runtime", "float")]
    assert tflite["details"]["where"] == "board emulated (aarch64), baseline worker"
    assert tflite["accuracy"]["reference"] == "tflite-runtime float on the host"
    assert tflite["accuracy"]["max_abs_error"] < MAX_FLOAT_ERROR and tflite["latency_ms"]["n"] == 1
    assert rows[("edgetvm", "none")]["accuracy"]["max_abs_error"] < MAX_FLOAT_ERROR
    assert 'failures="1"' in junit.read_text()
