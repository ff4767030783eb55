"""StaticQuantize + Requantize on a tiny conv -> bias -> relu -> max_pool -> reshape -> matmul module: the IR's
dtypes (int8 compute, int8 between the layers) and the numbers against a numpy emulation of the same int8 math."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from edgetvm.errors import InputError
from edgetvm.pipeline.calibration_stats import CalibrationMethod, CalibrationRanges, LayerRange
from edgetvm.pipeline.passes import Requantize, StaticQuantize
from edgetvm.pipeline.passes.dynamic_quantize import quantize_weight

X_SHAPE = (1, 3, 8, 8)
AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(0)
    return {
        "conv": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "bias": rng.standard_normal((1, 4, 1, 1)).astype(np.float32),
        "dense": rng.standard_normal((4 * 2 * 2, 5)).astype(np.float32),
        "dense_bias": rng.standard_normal(5).astype(np.float32),
    }


def _samples():
    rng = np.random.default_rng(1)
    return [rng.standard_normal(X_SHAPE).astype(np.float32) for _ in range(3)]


@pytest.fixture(scope="module")
def ranges(weights):
    """Min-max ranges of the two layer inputs over the test samples, computed in numpy."""
    samples = _samples()
    flats = [_float_flat(weights, x) for x in samples]
    layers = {
        "conv2d_0": LayerRange(float(min(x.min() for x in samples)), float(max(x.max() for x in samples)), 0.0),
        "matmul_0": LayerRange(0.0, float(max(f.max() for f in flats)), 0.0),
    }
    layers = {k: LayerRange(r.min, r.max, max(abs(r.min), abs(r.max))) for k, r in layers.items()}
    return CalibrationRanges(CalibrationMethod.MINMAX, len(samples), layers, "sha")


def _module(weights) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(X_SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = bb.emit(R.nn.conv2d(x, relax.const(weights["conv"]), strides=[2, 2], padding=[1, 1, 1, 1]))
            act = bb.emit(R.nn.relu(R.add(conv, relax.const(weights["bias"]))))
            pooled = bb.emit(R.nn.max_pool2d(act, pool_size=[2, 2], strides=[2, 2]))
            flat = bb.emit(R.reshape(pooled, (1, 16)))
            dense = bb.emit(R.matmul(flat, relax.const(weights["dense"])))
            out = bb.emit_output(R.add(dense, relax.const(weights["dense_bias"])))
        bb.emit_func_output(out)
    return bb.get()


def _quantized(weights, ranges, keep_float=frozenset()) -> tvm.IRModule:
    mod = StaticQuantize(ranges, keep_float)(_module(weights))
    return relax.transform.FoldConstant()(Requantize()(mod))


def _bindings(mod: tvm.IRModule) -> dict:
    return {b.var: b.value for block in mod["main"].body.blocks for b in block.bindings}


def _calls(mod: tvm.IRModule, op: str) -> list[relax.Call]:
    return [v for v in _bindings(mod).values() if isinstance(v, relax.Call) and getattr(v.op, "name", None) == op]


def _run(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    return relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def _conv2d_nchw(x, w, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    kh, kw = w.shape[2:]
    oh, ow = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def _max_pool_2x2(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def _emulate(weights, ranges, x):
    """The static int8 math in numpy: quantize the input with its calibrated scale, int32 conv, requantize
    straight to the matmul's scale with bias and ReLU, int8 max-pool and reshape, int32 matmul, dequantize."""
    s0, s1 = np.float32(ranges.scale("conv2d_0")), np.float32(ranges.scale("matmul_0"))
    xq = np.clip(np.round(x / s0), -127, 127).astype(np.int64)
    wq, w_scale = quantize_weight(weights["conv"], 0)
    acc = _conv2d_nchw(xq, wq.astype(np.int64), stride=2, pad=1)
    multiplier = (s0 * w_scale / s1).astype(np.float32).reshape(1, -1, 1, 1)
    rescaled = acc.astype(np.float32) * multiplier + (weights["bias"] / s1).astype(np.float32)
    q1 = np.clip(np.round(rescaled), 0, 127).astype(np.int64)
    flat = _max_pool_2x2(q1).reshape(1, 16)
    dq, d_scale = quantize_weight(weights["dense"], 1)
    return (flat @ dq.astype(np.int64)).astype(np.float32) * (s1 * d_scale) + weights["dense_bias"]


def _float_flat(weights, x):
    conv = _conv2d_nchw(x.astype(np.float64), weights["conv"].astype(np.float64), stride=2, pad=1)
    return _max_pool_2x2(np.maximum(conv + weights["bias"], 0)).reshape(1, 16)


def _float(weights, x):
    return _float_flat(weights, x) @ weights["dense"] + weights["dense_bias"]


def test_layers_compute_in_int8_with_constant_scales(weights, ranges):
    mod = StaticQuantize(ranges)(_module(weights))
    for op in ("relax.nn.conv2d", "relax.matmul"):
        (call,) = _calls(mod, op)
        assert [arg.ty.dtype for arg in call.args] == ["int8", "int8"] and call.ty.dtype == "int32"
    # no run-time scale: no max|x| reduction anywhere
    assert not _calls(mod, "relax.max") and not _calls(mod, "relax.abs")
    divides = _calls(mod, "relax.divide")
    scales = sorted(float(d.args[1].value.numpy()) for d in divides)
    expected = sorted(ranges.scale(key) for key in ("conv2d_0", "matmul_0"))
    np.testing.assert_allclose(scales, expected, rtol=1e-6)


def test_requantize_keeps_int8_between_the_layers(weights, ranges):
    mod = _quantized(weights, ranges)
    values = _bindings(mod)
    (matmul,) = _calls(mod, "relax.matmul")
    reshape = values[matmul.args[0]]
    assert reshape.op.name == "relax.reshape" and reshape.ty.dtype == "int8"
    pool = values[reshape.args[0]]
    assert pool.op.name == "relax.nn.max_pool2d" and pool.ty.dtype == "int8"
    cast = values[pool.args[0]]  # int8(clip(round(acc * M + B), 0, 127)): the rescale, ReLU in the clip
    assert cast.op.name == "relax.astype" and cast.ty.dtype == "int8"
    clip = values[cast.args[0]]
    assert clip.op.name == "relax.clip" and [float(a.value) for a in clip.args[1:]] == [0.0, 127.0]
    add = values[values[clip.args[0]].args[0]]
    multiply = values[add.args[0]]
    assert multiply.op.name == "relax.multiply" and values[multiply.args[0]].args[0].ty.dtype == "int32"
    # only the model input is divided by a scale; no float32 tensor between the conv and the matmul
    assert len(_calls(mod, "relax.divide")) == 1
    assert not _calls(mod, "relax.nn.relu")


def test_matches_numpy_emulation_and_float(weights, ranges):
    mod = _quantized(weights, ranges)
    for x in _samples():
        got = _run(mod, x)
        np.testing.assert_allclose(got, _emulate(weights, ranges, x), rtol=1e-5, atol=1e-4 * np.abs(got).max())
        expected = _float(weights, x)
        cosine = float((got * expected).sum() / np.linalg.norm(got) / np.linalg.norm(expected))
        assert cosine > 0.99, cosine


def test_keep_float_layer_stays_float_and_is_not_requantized(weights, ranges):
    mod = _quantized(weights, ranges, keep_float=frozenset({"conv2d_0"}))
    (conv,) = _calls(mod, "relax.nn.conv2d")
    (matmul,) = _calls(mod, "relax.matmul")
    assert conv.ty.dtype == "float32" and matmul.args[0].ty.dtype == "int8"
    # float conv output: the quantize moves ahead of the pool and reshape, but there is no accumulator to rescale
    pool = _calls(mod, "relax.nn.max_pool2d")[0]
    assert pool.ty.dtype == "int8" and len(_calls(mod, "relax.divide")) == 1


def test_missing_range_is_an_input_error(weights):
    ranges = CalibrationRanges(CalibrationMethod.MINMAX, 1, {"conv2d_0": LayerRange(0.0, 1.0, 1.0)}, "sha")
    with pytest.raises((InputError, RuntimeError), match="no entry for layer 'matmul_0'"):
        StaticQuantize(ranges)(_module(weights))  # TVM re-raises what a Python pass raised as RuntimeError


def test_compiles_for_aarch64(weights, ranges):
    executable = tvm.compile(_quantized(weights, ranges), target=tvm.target.Target(AARCH64))
    assert isinstance(executable, relax.VMExecutable)
