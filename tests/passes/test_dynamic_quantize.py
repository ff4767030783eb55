"""DynamicQuantize on a tiny conv2d + relu + matmul module: the IR it writes and the numbers it computes."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from edgetvm.pipeline.passes import DynamicQuantize
from edgetvm.pipeline.passes.dynamic_quantize import EPSILON, quantize_weight
from edgetvm.pipeline.passes.quant_layers import quant_layers

X_SHAPE = (1, 3, 8, 8)
AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(0)
    return {
        "conv": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "bias": rng.standard_normal((1, 4, 1, 1)).astype(np.float32),
        "dense": rng.standard_normal((4 * 4 * 4, 5)).astype(np.float32),
    }


def _module(weights, dense_weight_is_input: bool = False) -> tvm.IRModule:
    """conv2d(stride 2, pad 1) + bias + relu -> reshape -> matmul; the matmul weight is a constant or an input."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(X_SHAPE, "float32"))
    params = [x]
    if dense_weight_is_input:
        params.append(relax.Var("w", relax.TensorType(weights["dense"].shape, "float32")))
    with bb.function("main", params):
        with bb.dataflow():
            conv = bb.emit(R.nn.conv2d(x, relax.const(weights["conv"]), strides=[2, 2], padding=[1, 1, 1, 1]))
            act = bb.emit(R.nn.relu(R.add(conv, relax.const(weights["bias"]))))
            flat = bb.emit(R.reshape(act, (1, 64)))
            dense = params[1] if dense_weight_is_input else relax.const(weights["dense"])
            out = bb.emit_output(R.matmul(flat, dense))
        bb.emit_func_output(out)
    return bb.get()


def _calls(mod: tvm.IRModule) -> list[relax.Call]:
    found = []
    relax.analysis.post_order_visit(
        mod["main"], lambda e: found.append(e) if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None
    )
    return found


def _run(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


# numpy emulation of the int8 math the pass writes


def _quantize_activation(x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    max_abs = np.float32(max(np.abs(x).max(), EPSILON))
    scale = max_abs / np.float32(127)
    return np.clip(np.round(x * (np.float32(127) / max_abs)), -127, 127).astype(np.int64), scale


def _conv2d_nchw(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    kh, kw = w.shape[2:]
    oh, ow = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def _emulate(weights, x: np.ndarray) -> np.ndarray:
    xq, x_scale = _quantize_activation(x)
    wq, w_scale = quantize_weight(weights["conv"], 0)
    acc = _conv2d_nchw(xq, wq.astype(np.int64), stride=2, pad=1)
    conv = acc.astype(np.float32) * (x_scale * w_scale).reshape(-1, 1, 1)
    flat = np.maximum(conv + weights["bias"], 0).reshape(1, 64)
    fq, f_scale = _quantize_activation(flat)
    dq, d_scale = quantize_weight(weights["dense"], 1)
    return (fq @ dq.astype(np.int64)).astype(np.float32) * (f_scale * d_scale)


def _float(weights, x: np.ndarray) -> np.ndarray:
    conv = _conv2d_nchw(x.astype(np.float64), weights["conv"].astype(np.float64), stride=2, pad=1)
    return np.maximum(conv + weights["bias"], 0).reshape(1, 64) @ weights["dense"]


def test_weight_quantizer_is_per_output_channel():
    w = np.array([[[[1.0, -0.25]]], [[[0.01, 0.04]]]], dtype=np.float32)  # 2 output channels, very different ranges
    wq, scale = quantize_weight(w, 0)
    assert wq.dtype == np.int8 and wq.shape == w.shape
    np.testing.assert_allclose(scale, [1.0 / 127, 0.04 / 127], rtol=1e-6)
    assert wq.reshape(2, 2).tolist() == [[127, -32], [32, 127]]  # -31.75 and 31.75: each channel uses its own scale


def test_rewrites_conv2d_and_matmul_to_int8(weights):
    before = _module(weights)
    text_before = before.script()
    after = DynamicQuantize()(before)
    assert before.script() == text_before, "the pass changed its input module"
    calls = _calls(after)
    compute = [c for c in calls if c.op.name in ("relax.nn.conv2d", "relax.matmul")]
    assert [c.op.name for c in compute] == ["relax.nn.conv2d", "relax.matmul"]
    for call in compute:
        assert str(call.attrs.out_dtype) == "int32"
        assert [arg.ty.dtype for arg in call.args] == ["int8", "int8"]
    conv = compute[0]
    assert [int(s) for s in conv.attrs.strides] == [2, 2] and [int(p) for p in conv.attrs.padding] == [1, 1, 1, 1]
    int8_casts = [c for c in calls if c.op.name == "relax.astype" and str(c.attrs.dtype) == "int8"]
    assert len(int8_casts) == 2  # one per activation; the weights are int8 constants
    assert after["main"].ret_ty.dtype == "float32"


def test_leaves_matmul_with_a_runtime_weight_in_float(weights):
    after = DynamicQuantize()(_module(weights, dense_weight_is_input=True))
    by_op = {c.op.name: c for c in _calls(after)}
    assert str(by_op["relax.nn.conv2d"].attrs.out_dtype) == "int32"
    assert by_op["relax.matmul"].args[1].ty.dtype == "float32"
    assert by_op["relax.matmul"].ty.dtype == "float32"


def test_matches_numpy_int8_emulation_and_float(weights):
    quantized = DynamicQuantize()(_module(weights))
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.standard_normal(X_SHAPE).astype(np.float32)
        got = _run(quantized, x)
        # same int8 math in numpy: only float32 rounding of the scale products differs
        np.testing.assert_allclose(got, _emulate(weights, x), rtol=1e-5, atol=1e-5 * np.abs(got).max())
        expected = _float(weights, x)
        cosine = float((got * expected).sum() / np.linalg.norm(got) / np.linalg.norm(expected))
        assert cosine > 0.999, cosine


def test_zero_input_gives_zero_not_nan(weights):
    got = _run(DynamicQuantize()(_module(weights)), np.zeros(X_SHAPE, np.float32))
    bias_only = np.maximum(weights["bias"], 0).repeat(4, axis=2).repeat(4, axis=3).reshape(1, 64)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, _emulate(weights, np.zeros(X_SHAPE, np.float32)), rtol=1e-5, atol=1e-6)
    assert np.abs(got - bias_only @ weights["dense"]).max() < 0.05 * np.abs(got).max()


def test_compiles_for_aarch64(weights):
    executable = tvm.compile(DynamicQuantize()(_module(weights)), target=tvm.target.Target(AARCH64))
    assert isinstance(executable, relax.VMExecutable)


def test_nhwc_conv_matches_the_nchw_rewrite(weights):
    """Per-channel scales must broadcast along the channel axis of whichever layout the conv uses."""
    x = np.random.default_rng(2).standard_normal(X_SHAPE).astype(np.float32)

    def conv_module(layout: str, kernel_layout: str, weight: np.ndarray, shape: tuple) -> tvm.IRModule:
        bb = relax.BlockBuilder()
        var = relax.Var("x", relax.TensorType(shape, "float32"))
        with bb.function("main", [var]):
            with bb.dataflow():
                conv = R.nn.conv2d(
                    var, relax.const(weight), padding=[1, 1], data_layout=layout, kernel_layout=kernel_layout
                )
                out = bb.emit_output(conv)
            bb.emit_func_output(out)
        return DynamicQuantize()(bb.get())

    nchw = _run(conv_module("NCHW", "OIHW", weights["conv"], X_SHAPE), x)
    hwio = weights["conv"].transpose(2, 3, 1, 0)
    nhwc = _run(conv_module("NHWC", "HWIO", hwio, (1, 8, 8, 3)), x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(nhwc.transpose(0, 3, 1, 2), nchw, rtol=1e-6, atol=1e-6)


def test_vector_weight_matmul_stays_float():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(R.matmul(x, relax.const(np.ones(4, np.float32))))
        bb.emit_func_output(out)
    before = bb.get()
    tvm.ir.assert_structural_equal(DynamicQuantize()(before), before)


def test_layers_are_keyed_in_binding_order_and_keep_float_leaves_them_float(weights):
    mod = _module(weights)
    assert [(layer.key, layer.weight_shape) for layer in quant_layers(mod)] == [
        ("conv2d_0", (4, 3, 3, 3)),
        ("matmul_0", (64, 5)),
    ]
    kept = DynamicQuantize(keep_float=frozenset({"matmul_0"}))(mod)
    dtypes = {c.op.name: c.ty.dtype for c in _calls(kept) if c.op.name in ("relax.nn.conv2d", "relax.matmul")}
    assert dtypes == {"relax.nn.conv2d": "int32", "relax.matmul": "float32"}


# per-row activation scales (matmul) and per-tensor weight scales

ROWS = 6


def _mlp(weights) -> tvm.IRModule:
    """x [ROWS, 64] -> matmul + relu -> matmul: two layers whose inputs have a row each per sample."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((ROWS, 64), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            hidden = bb.emit(R.nn.relu(R.matmul(x, relax.const(weights["dense"][:, :4].repeat(12, axis=1)))))
            out = bb.emit_output(R.matmul(hidden, relax.const(weights["dense"][:48])))
        bb.emit_func_output(out)
    return bb.get()


def _quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    max_abs = np.maximum(np.abs(x), np.float32(EPSILON)).max(axis=-1, keepdims=True)
    return np.clip(np.round(x * (np.float32(127) / max_abs)), -127, 127).astype(np.int64), max_abs / np.float32(127)


def _emulate_mlp(weights, x: np.ndarray, per_tensor_weights: bool = False) -> np.ndarray:
    value = x
    dense = [weights["dense"][:, :4].repeat(12, axis=1), weights["dense"][:48]]
    for i, weight in enumerate(dense):
        xq, x_scale = _quantize_rows(value)
        wq, w_scale = quantize_weight(weight, 1, per_tensor_weights)
        value = (xq @ wq.astype(np.int64)).astype(np.float32) * x_scale * w_scale
        value = np.maximum(value, 0) if i == 0 else value
    return value


def _run_kernels(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    """Built as edgetvm builds for this host: its fusion passes and default schedules."""
    from edgetvm.kernels_schedules import pipeline as kernels_pipeline

    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    executable = tvm.compile(mod, target=target, relax_pipeline=kernels_pipeline.relax_pipeline(target))
    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def _reductions(mod: tvm.IRModule) -> list[tuple[list[int] | None, tuple]]:
    """(axes, result shape) of every max in ``mod``'s main: the activation scales' reductions."""
    found = [c for c in _calls(mod) if c.op.name == "relax.max"]
    return [(None if c.attrs.axis is None else [int(a) for a in c.attrs.axis], tuple(c.ty.shape)) for c in found]


def test_per_row_reduces_each_matmul_row_and_leaves_convs_per_tensor(weights):
    rows = DynamicQuantize(per_row=True)(_mlp(weights))
    assert _reductions(rows) == [([-1], (ROWS, 1)), ([-1], (ROWS, 1))]
    matmuls = [c for c in _calls(rows) if c.op.name == "relax.matmul"]
    assert [([a.ty.dtype for a in c.args], str(c.attrs.out_dtype)) for c in matmuls] == [
        (["int8", "int8"], "int32")
    ] * 2
    assert _reductions(DynamicQuantize()(_mlp(weights))) == [(None, ()), (None, ())]
    # the conv's input keeps one scale; the matmul's one row (1, 64) gets a (1, 1) column
    assert _reductions(DynamicQuantize(per_row=True)(_module(weights))) == [(None, ()), ([-1], (1, 1))]


def test_per_row_matches_numpy_int8_emulation_as_edgetvm_builds_it(weights):
    quantized = DynamicQuantize(per_row=True)(_mlp(weights))
    rng = np.random.default_rng(3)
    # rows of very different magnitudes: each keeps its own precision
    x = (rng.standard_normal((ROWS, 64)) * np.logspace(-3, 2, ROWS)[:, None]).astype(np.float32)
    expected = _emulate_mlp(weights, x)
    for got in (_run(quantized, x), _run_kernels(quantized, x)):
        for row, want in zip(got, expected, strict=True):  # each row to its own magnitude
            np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    per_tensor = _run(DynamicQuantize()(_mlp(weights)), x)
    small = np.abs(per_tensor[0] - expected[0]).max() / np.abs(expected[0]).max()
    assert small > 0.1, small  # per tensor, the smallest row has a few int8 levels left, per row all 127


def test_per_row_results_do_not_depend_on_the_other_rows(weights):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((ROWS, 64)).astype(np.float32)
    louder = x.copy()
    louder[1:] *= 100  # the other rows 100 times larger
    rows = DynamicQuantize(per_row=True)(_mlp(weights))
    np.testing.assert_array_equal(_run_kernels(rows, x)[0], _run_kernels(rows, louder)[0])
    tensor = DynamicQuantize()(_mlp(weights))
    assert not np.array_equal(_run_kernels(tensor, x)[0], _run_kernels(tensor, louder)[0])


def test_per_tensor_weights_share_one_scale(weights):
    w = weights["dense"][:48]
    wq, scale = quantize_weight(w, 1, per_tensor=True)
    assert np.all(scale == scale[0]) and scale[0] == np.float32(np.abs(w).max() / 127)
    assert np.abs(wq).max() == 127 and np.abs(wq).max(axis=0).min() < 127  # some columns use fewer levels
    x = np.random.default_rng(5).standard_normal((ROWS, 64)).astype(np.float32)
    got = _run(DynamicQuantize(per_tensor_weights=True, per_row=True)(_mlp(weights)), x)
    expected = _emulate_mlp(weights, x, per_tensor_weights=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
