"""Real models quantized by onnxruntime's quantizers, compiled with ``edgetvm compile``, run against onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetvm.cli import main
from edgetvm.pipeline.bench_variants import _quantizer_warnings_to_debug
from edgetvm.pipeline.bundled_models import bundled_model
from edgetvm.pipeline.package import Package
from edgetvm.pipeline.run_local import LocalRunner
from edgetvm.pipeline.trained_models import load_calibration_set, load_eval_set

PPOCR_SHAPE = (1, 3, 48, 192)
# (model, variant): what onnxruntime's quantizers write for it. ppocr-cls takes the longest to build: two variants,
# the integer ops (with weights quantized in the graph) and QOperator (QLinearAdd, QLinearMul, QLinearSoftmax...).
CASES = [
    ("mnist-cnn", "dynamic"),
    ("mnist-cnn", "qdq"),
    ("mnist-cnn", "qoperator"),
    ("mnist-cnn", "qdq-per-channel"),
    ("ppocr-cls", "dynamic"),
    ("ppocr-cls", "qoperator-per-channel"),
]


def _inputs(model: str, count: int, offset: int = 0) -> list[dict[str, np.ndarray]]:
    if model == "mnist-cnn":
        images, _ = load_eval_set()
        return [{"image": images[i : i + 1]} for i in range(offset, offset + count)]
    rng = np.random.default_rng(offset)
    return [{"x": rng.random(PPOCR_SHAPE, dtype=np.float32)} for _ in range(count)]


def _calibration(model: str) -> list[dict[str, np.ndarray]]:
    if model == "mnist-cnn":
        return [{"image": image[None]} for image in load_calibration_set()[:32]]
    return _inputs(model, 4, offset=100)


def _float_model(model: str, directory: Path) -> Path:
    """The model with static input shapes (quantize_static's calibration needs them)."""
    from edgetvm.pipeline import onnx_static_shapes

    path = directory / f"{model}.onnx"
    if not path.exists():
        loaded = onnx.load(str(bundled_model(model).path()))
        shapes = {"x": PPOCR_SHAPE} if model == "ppocr-cls" else {}
        onnx.save(onnx_static_shapes.fix_input_shapes(loaded, shapes), str(path))
    return path


def _quantize(model: str, variant: str, directory: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    source = _float_model(model, directory)
    out = directory / f"{model}-{variant}.onnx"
    with _quantizer_warnings_to_debug():
        if variant == "dynamic":
            quantize_dynamic(source, out)
            return out
        batches = iter(_calibration(model))

        class Reader(CalibrationDataReader):
            def get_next(self):
                return next(batches, None)

        fmt = QuantFormat.QOperator if variant.startswith("qoperator") else QuantFormat.QDQ
        quantize_static(source, out, Reader(), quant_format=fmt, per_channel=variant.endswith("per-channel"))
    return out


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """``quantized(model, variant)`` -> (quantized .onnx, x86 artifact directory), built once per module."""
    root = tmp_path_factory.mktemp("quantized")
    built = {}

    def get(model: str, variant: str):
        if (model, variant) not in built:
            path = _quantize(model, variant, root)
            out = root / f"{model}-{variant}-x86"
            shape = ["--input-shape", "x=1x3x48x192"] if model == "ppocr-cls" else []
            assert main(["-q", "compile", str(path), *shape, "--target", "x86", "-o", str(out)]) == 0
            built[model, variant] = (path, out)
        return built[model, variant]

    return get


def _onnxruntime(path: Path, inputs: list[dict]) -> list[np.ndarray]:
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(None, feed)[0] for feed in inputs]


@pytest.mark.parametrize(("model", "variant"), CASES)
def test_quantized_model_compiles_to_int8_and_agrees_with_onnxruntime(quantized, model, variant):
    path, artifact = quantized(model, variant)
    manifest = json.loads((artifact / "manifest.json").read_text())
    source = "onnx-qdq" if variant.startswith("qdq") else "onnx-qoperator"
    assert manifest["quantization"]["source"] == source
    # quantize_dynamic leaves ppocr-cls's MatMul in float (onnxruntime runs it in float too); every other layer is
    # integer.
    float_layers = 1 if (model, variant) == ("ppocr-cls", "dynamic") else 0
    assert manifest["quantization"]["integer_layers"] > 0 and manifest["quantization"]["float_layers"] == float_layers
    assert manifest["schedules"]["naive"] == []
    inputs = _inputs(model, 8)
    package = Package.load(artifact)
    runner, name = LocalRunner(package), package.outputs[0].name
    ours = [runner.run(feed)[name] for feed in inputs]
    theirs = _onnxruntime(path, inputs)
    agreement = np.mean([a.argmax() == b.argmax() for a, b in zip(ours, theirs, strict=True)])
    got, want = np.concatenate([o.ravel() for o in ours]), np.concatenate([t.ravel() for t in theirs])
    cosine = float(got @ want / np.linalg.norm(got) / np.linalg.norm(want))
    assert agreement >= 7 / 8, agreement
    assert cosine >= 0.99, cosine


def test_quantized_model_builds_for_rpi4(quantized, tmp_path):
    path, _ = quantized("mnist-cnn", "qdq")
    out = tmp_path / "rpi4"
    assert main(["-q", "compile", str(path), "--target", "rpi4", "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["library"]["machine"] == "aarch64"
    assert manifest["quantization"]["source"] == "onnx-qdq"
    assert manifest["schedules"]["naive"] == []


def test_already_quantized_model_refuses_a_quantization_scheme(quantized, tmp_path, capsys):
    path, _ = quantized("mnist-cnn", "qdq")
    code = main(["compile", str(path), "--target", "x86", "--quantize", "w8a8-dynamic", "-o", str(tmp_path / "o")])
    assert code == 2
    assert "already quantized (onnx-qdq)" in capsys.readouterr().err


def test_bad_quantized_model_is_one_line_exit_2(tmp_path, capsys):
    """A QLinearConv whose activation scale has one value per channel: ONNX allows only one per tensor."""
    inits = [
        numpy_helper.from_array(np.full(4, 0.1, np.float32), "xs"),
        numpy_helper.from_array(np.uint8(128), "xzp"),
        numpy_helper.from_array(np.ones((8, 4, 3, 3), np.int8), "w"),
        numpy_helper.from_array(np.float32(0.05), "ws"),
        numpy_helper.from_array(np.int8(0), "wzp"),
        numpy_helper.from_array(np.float32(0.2), "ys"),
        numpy_helper.from_array(np.uint8(128), "yzp"),
    ]
    names = ["x", "xs", "xzp", "w", "ws", "wzp", "ys", "yzp"]
    node = helper.make_node("QLinearConv", names, ["y"], kernel_shape=[3, 3])
    graph = helper.make_graph(
        [node],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 8, 6, 6])],
        inits,
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    code = main(["compile", str(path), "--target", "x86", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "QLinearConv: x_scale must be a scalar" in err[0], err
