"""``edgetvm bench`` on a tiny ONNX CNN made with onnx.helper: the report's schema and that every variant ran.

No timed asserts: latencies are only checked for consistency (n, p90 >= median).
"""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetvm.cli import main

REPEAT = 3
VARIANTS = [
    ("onnxruntime", "float"),
    ("onnxruntime", "quantize_dynamic"),
    ("onnxruntime", "quantize_static"),
    ("edgetvm", "none"),
    ("edgetvm", "w8a8-dynamic"),
]


def _tiny_cnn(path):
    """Conv 3->16 (3x3), ReLU, Conv 16->64 (1x1), global average pool, Gemm 64->10, softmax: 1x3x32x32 -> 1x10.

    The 1x1 conv uses each input value for 64 multiply-adds: enough for w8a8-dynamic to quantize it
    (``min_macs_per_input``)."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["g"], transB=1),
        helper.make_node("Softmax", ["g"], ["y"], axis=-1),
    ]
    weights = [weight("w1", 16, 3, 3, 3), weight("b1", 16), weight("w2", 64, 16, 1, 1), weight("b2", 64)]
    weights += [weight("w3", 10, 64), weight("b3", 10)]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return _tiny_cnn(tmp_path_factory.mktemp("model") / "tiny_cnn.onnx")


EVAL_SAMPLES = 8


@pytest.fixture(scope="module")
def bench_dir(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(1)
    eval_set = root / "eval.npz"
    np.savez(eval_set, x=rng.random((EVAL_SAMPLES, 3, 32, 32), dtype=np.float32), label=np.arange(EVAL_SAMPLES) % 10)
    out = root / "out"
    argv = ["-q", "bench", str(tiny_model), "--schemes", "none,w8a8-dynamic", "--threads", "2"]
    argv += ["--eval-set", str(eval_set)]
    assert main([*argv, "--repeat", str(REPEAT), "--warmup", "1", "--settle-ms", "5", "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def report(bench_dir):
    return json.loads((bench_dir / "bench.json").read_text())


def test_report_schema(report, tiny_model):
    assert {"format_version", "created", "model", "target", "baseline", "host", "timing", "roofline", "results"} <= set(
        report
    )
    assert report["baseline"] == {"runtime": "onnxruntime", "variant": "float"}
    assert report["model"]["path"] == str(tiny_model.resolve()) and len(report["model"]["sha256"]) == 64
    assert report["model"]["inputs"] == [{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32"}]
    # 32*32*16 outputs x 27 + 32*32*64 x 16 + 10 x 64 multiply-accumulates
    assert report["model"]["flops"] == 2 * (32 * 32 * 16 * 27 + 32 * 32 * 64 * 16 + 10 * 64)
    host = report["host"]
    assert host["emulated"] is False and host["threads"] == 2 and host["cpu"]
    assert host["tvm_threads"] == 2  # TVM would take half the cores on x86 by itself
    assert {"tvm", "onnxruntime", "tflite-runtime", "numpy", "edgetvm"} <= set(host["versions"])
    assert report["roofline"]["gflops"] > 0 and report["roofline"]["threads"] == 2
    assert report["timing"]["rounds"] == REPEAT and report["timing"]["warmup_rounds"] == 1
    assert report["timing"]["settle_ms"] == 5


def test_one_row_per_variant_with_consistent_latency(report):
    rows = report["results"]
    assert [(row["runtime"], row["variant"]) for row in rows] == VARIANTS
    for row in rows:
        assert row["error"] is None, row
        latency = row["latency_ms"]
        assert latency["n"] == REPEAT == len(row["samples_ms"])
        assert latency["p99"] >= latency["p90"] >= latency["median"] >= latency["min"] > 0
        assert row["ratio_to_baseline"] == pytest.approx(latency["median"] / rows[0]["latency_ms"]["median"])
        assert row["gflops"] > 0 and row["roofline_fraction"] > 0


def test_every_variant_ran_and_agrees_with_the_float_reference(report):
    rows = {(row["runtime"], row["variant"]): row["accuracy"] for row in report["results"]}
    for key in (("onnxruntime", "float"), ("edgetvm", "none")):
        assert rows[key]["min_cosine"] > 0.99999 and rows[key]["max_abs_error"] < 1e-4, key
    for key in (("onnxruntime", "quantize_dynamic"), ("onnxruntime", "quantize_static"), ("edgetvm", "w8a8-dynamic")):
        accuracy = rows[key]
        assert accuracy["reference"] == "onnxruntime float"
        assert accuracy["min_cosine"] > 0.95, (key, accuracy)
        assert accuracy["max_abs_error"] > 1e-6, key  # differs from float: the quantized model really ran


def test_outputs_written(bench_dir):
    assert (bench_dir / "bench.png").read_bytes()[:4] == b"\x89PNG"
    table = (bench_dir / "bench.md").read_text()
    assert "| onnxruntime | float |" in table and "| edgetvm | w8a8-dynamic |" in table
    assert (bench_dir / "builds" / "none" / "model.so").is_file()
    assert (bench_dir / "baselines" / "quantize_dynamic.onnx").is_file()
    assert not [p for p in bench_dir.parent.iterdir() if p.name.startswith(".out")]


def test_a_baseline_that_fails_is_an_error_row(tiny_model, tmp_path, monkeypatch, capsys):
    from edgetvm.pipeline import bench_variants

    message = "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : ConvInteger(10)"

    def refuse(*_args):
        raise RuntimeError(message)

    monkeypatch.setattr(bench_variants, "_quantize_dynamic", refuse)
    out = tmp_path / "out"
    argv = ["-q", "bench", str(tiny_model), "--repeat", "2", "--warmup", "0", "--settle-ms", "0", "--json"]
    assert main([*argv, "-o", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    rows = {row["variant"]: row for row in printed["results"]}
    assert rows["quantize_dynamic"]["error"] == f"RuntimeError: {message}"
    assert rows["quantize_dynamic"]["latency_ms"] is None
    assert rows["quantize_static"]["error"] is None and rows["none"]["latency_ms"]["n"] == 2
    assert "failed: RuntimeError" in (out / "bench.md").read_text()


def test_an_unknown_board_is_refused_before_any_build(tiny_model, tmp_path, capsys):
    boards = tmp_path / "boards.toml"
    boards.write_text('[boards.kitchen-pi]\nhost = "10.0.0.9"\ntarget = "rpi4"\n')
    out = tmp_path / "out"
    argv = ["bench", str(tiny_model), "--target", "rpi4", "--board", "attic-pi", "--boards", str(boards), "-o"]
    assert main([*argv, str(out)]) == 4
    err = capsys.readouterr().err.strip()
    assert err == (
        "edgetvm bench: error: board 'attic-pi' is not in the boards file; known boards: kitchen-pi, emulated"
    )
    assert not out.exists()


def test_a_board_needs_a_board_target(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", str(tiny_model), "--board", "emulated", "-o", str(out)]) == 2
    assert "--target x86 runs on this host; give a board target" in capsys.readouterr().err
    assert not out.exists()


def test_every_variant_answered_the_eval_set(report):
    assert report["timing"]["eval_set"].endswith("eval.npz")
    for row in report["results"]:
        scored = row["eval"]
        assert scored["samples"] == EVAL_SAMPLES and scored["reference"] == "onnxruntime float"
        assert 0.0 <= scored["top1_accuracy"] <= 1.0
    by_label = {f"{row['runtime']} {row['variant']}": row["eval"] for row in report["results"]}
    assert by_label["onnxruntime float"]["top1_agreement"] == 1.0
    assert by_label["edgetvm none"]["top1_agreement"] == 1.0  # the float build gives the same answers


def test_an_eval_set_that_does_not_fit_exits_2_before_any_build(tiny_model, tmp_path, capsys):
    np.savez(tmp_path / "eval.npz", image=np.zeros((2, 3, 32, 32), dtype=np.float32))
    out = tmp_path / "out"
    assert main(["-q", "bench", str(tiny_model), "--eval-set", str(tmp_path / "eval.npz"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "eval set" in err and "the model's inputs are ['x']" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target", "rpi4", "--eval-set", "eval.npz"], "--eval-set is scored by a bench on this host"),
        (["--schemes", "none,w4a4"], "unknown quantization scheme 'w4a4'"),
        (["--repeat", "0"], "--repeat must be at least 1, got 0"),
        (["--settle-ms", "-1"], "--settle-ms must be 0 or more, got -1.0"),
        (["--schemes", "none,none"], "--schemes must name each scheme once"),
    ],
)
def test_bad_options_exit_2(tiny_model, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["bench", str(tiny_model), *extra, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_tflite_model_is_measured_against_tflite_runtime(blazeface_path, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["-q", "bench", str(blazeface_path), "--repeat", "2", "--warmup", "0", "--settle-ms", "0", "--json"]
    assert main([*argv, "-o", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["baseline"] == {"runtime": "tflite-runtime", "variant": "float"}
    rows = {(row["runtime"], row["variant"]): row for row in report["results"]}
    assert list(rows) == [("tflite-runtime", "float"), ("edgetvm", "none")]
    accuracy = rows["edgetvm", "none"]["accuracy"]
    assert accuracy["reference"] == "tflite-runtime float"
    assert [o["name"] for o in accuracy["outputs"]] == ["regressors", "classificators"]
    assert accuracy["min_cosine"] > 0.9999, accuracy
    assert rows["tflite-runtime", "float"]["details"]["num_threads"] == report["host"]["threads"]
