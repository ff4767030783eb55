"""QDQToInt8 and the quantized-operator converters on tiny ONNX graphs: integer IR, numerics of onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from edgetvm.kernels_schedules.apply_schedules import ScheduleReport
from edgetvm.pipeline.build import compile_module
from edgetvm.pipeline.ingest import load_model
from edgetvm.pipeline.passes import QDQToInt8
from edgetvm.targets import resolve_target

RNG = np.random.default_rng(7)


def _float_cnn(path):
    """conv 3x3 pad 1 (16 -> 16) -> relu -> conv 3x3 stride 2 pad 1 (16 -> 24) -> flatten -> gemm (transB)."""
    inits = [
        numpy_helper.from_array((RNG.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32), "w1"),
        numpy_helper.from_array((RNG.standard_normal(16) * 0.1).astype(np.float32), "b1"),
        numpy_helper.from_array((RNG.standard_normal((24, 16, 3, 3)) * 0.1).astype(np.float32), "w2"),
        numpy_helper.from_array((RNG.standard_normal(24) * 0.1).astype(np.float32), "b2"),
        numpy_helper.from_array((RNG.standard_normal((10, 24 * 4 * 4)) * 0.05).astype(np.float32), "fc"),
        numpy_helper.from_array((RNG.standard_normal(10) * 0.1).astype(np.float32), "fcb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Flatten", ["c2"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def _inputs(count: int = 3) -> list[np.ndarray]:
    return [RNG.uniform(-1, 2, (1, 16, 8, 8)).astype(np.float32) for _ in range(count)]


@pytest.fixture(scope="module")
def float_cnn(tmp_path_factory):
    return _float_cnn(tmp_path_factory.mktemp("qdq") / "tiny.onnx")


def _quantized(float_path, kind: str):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    out = float_path.with_name(f"tiny_{kind}.onnx")
    if kind == "dynamic":
        quantize_dynamic(float_path, out, per_channel=True, reduce_range=True)  # reduce_range: see below
        return out

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter({"x": x} for x in _inputs(4))

        def get_next(self):
            return next(self.batches, None)

    fmt = QuantFormat.QOperator if kind.startswith("qoperator") else QuantFormat.QDQ
    # onnxruntime's x86 uint8 x int8 QLinearConv kernel (vpmaddubsw) saturates pairs of products in int16 unless
    # the weights use 7 bits (reduce_range): with it, onnxruntime computes the exact sums that edgetvm computes.
    quantize_static(
        float_path,
        out,
        Reader(),
        quant_format=fmt,
        activation_type=QuantType.QUInt8 if kind.endswith("u8") else QuantType.QInt8,
        per_channel=kind.endswith("pc"),
        reduce_range=kind == "qoperator-u8",
    )
    return out


def _layers(mod) -> list[tuple[str, str, str, str]]:
    """(op, data dtype, weight dtype, out dtype) of every conv2d / matmul of ``main``."""
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            if expr.op.name in ("relax.nn.conv2d", "relax.matmul"):
                found.append((expr.op.name, *(str(a.ty.dtype) for a in expr.args[:2]), str(expr.ty.dtype)))

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


def _run_tvm(imported, inputs):
    report = ScheduleReport()
    executable = compile_module(imported, resolve_target("x86"), report)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return [vm["main"](tvm.runtime.tensor(x)).numpy() for x in inputs], report


def _run_ort(path, inputs, optimized: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimized:  # the ONNX definition, op by op (the optimized graph fuses QDQ into onnxruntime's kernels)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [session.run(None, {"x": x})[0] for x in inputs]


def _output_step(path) -> float:
    """The scale of the last DequantizeLinear / QLinear output: one quantization step of the result."""
    model = onnx.load(str(path))
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    last = [n for n in model.graph.node if n.op_type in ("DequantizeLinear", "QGemm")][-1]
    name = last.input[1] if last.op_type == "DequantizeLinear" else last.input[7]
    return float(values[name])


@pytest.mark.parametrize("kind", ["qdq", "qdq-u8", "qdq-pc", "qoperator-u8", "qoperator-pc"])
def test_static_quantization_becomes_integer_layers_with_onnxruntime_numerics(float_cnn, kind):
    path = _quantized(float_cnn, kind)
    imported = load_model(path)
    assert imported.quantization["source"] == ("onnx-qoperator" if kind.startswith("qoperator") else "onnx-qdq")
    layers = _layers(imported.mod)
    assert len(layers) == 3 and imported.quantization["integer_layers"] == 3
    for op, data, weight, out in layers:
        assert data == "int8" and weight == "int8" and out == "int32", (op, data, weight, out)
    inputs = _inputs()
    ours, report = _run_tvm(imported, inputs)
    assert report.naive() == []
    step = _output_step(path)
    for got, want in zip(ours, _run_ort(path, inputs, optimized=False), strict=True):
        assert np.abs(got - want).max() <= step * 1.01


def test_dynamic_quantization_runtime_zero_point(float_cnn):
    path = _quantized(float_cnn, "dynamic")
    imported = load_model(path)
    assert imported.quantization["source"] == "onnx-qoperator"
    assert all(layer[1:] == ("int8", "int8", "int32") for layer in _layers(imported.mod))
    inputs = _inputs()
    ours, _ = _run_tvm(imported, inputs)
    for got, want in zip(ours, _run_ort(path, inputs, optimized=False), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def _hand_qdq(path, x_zp: int, w_zp: int):
    """x -> Q(uint8, zero point x_zp) -> DQ -> Conv(pad 1, DQ(uint8 weight, zero point w_zp)) -> output, float."""
    w = RNG.integers(0, 256, (8, 4, 3, 3)).astype(np.uint8)
    inits = [
        numpy_helper.from_array(np.float32(0.02), "xs"),
        numpy_helper.from_array(np.array(x_zp, np.uint8), "xzp"),
        numpy_helper.from_array(w, "wq"),
        numpy_helper.from_array(np.float32(0.01), "ws"),
        numpy_helper.from_array(np.array(w_zp, np.uint8), "wzp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xzp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xzp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["wd"]),
        helper.make_node("Conv", ["xd", "wd"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.mark.parametrize(("x_zp", "w_zp", "weight_dtype"), [(200, 128, "int8"), (3, 77, "int16")])
def test_asymmetric_zero_points_and_padding_are_exact(tmp_path, x_zp, w_zp, weight_dtype):
    """uint8 activations with a zero point far from 128 (padding must hold it), uint8 weights with a zero point;
    when ``w - w_zp`` leaves int8, the layer is held in int16 and stays exact."""
    path = _hand_qdq(tmp_path / "hand.onnx", x_zp, w_zp)
    imported = load_model(path)
    (layer,) = _layers(imported.mod)
    assert layer == ("relax.nn.conv2d", weight_dtype, weight_dtype, "int32")
    inputs = [RNG.uniform(-4, 1.5, (1, 4, 6, 6)).astype(np.float32) for _ in range(2)]
    ours, _ = _run_tvm(imported, inputs)
    for got, want in zip(ours, _run_ort(path, inputs, optimized=False), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_pass_leaves_float_models_alone(float_cnn):
    imported = load_model(float_cnn)
    assert imported.quantization is None
    rewritten = QDQToInt8()(imported.mod)
    tvm.ir.assert_structural_equal(rewritten, imported.mod)
