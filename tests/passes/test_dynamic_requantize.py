"""DynamicRequantize after DynamicQuantize (the w8a8-dynamic pipeline): between two int8 layers the int32 accumulator
goes straight to int8 with the run-time scale, in the rewritten IR and in the fused kernels of the build, and the
numbers agree with a numpy emulation of the same dynamic int8 scheme."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.script import relax as R

from edgetvm.kernels_schedules.pipeline import layout_passes
from edgetvm.pipeline.passes import DynamicRequantize
from edgetvm.pipeline.passes.dynamic_quantize import EPSILON, quantize_weight
from edgetvm.pipeline.quantize import PIPELINES, PipelineOptions
from edgetvm.pipeline.schemes import get_scheme

X_SHAPE = (1, 4, 8, 8)
AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}
HOST = {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(0)
    return {
        "conv1": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
        "bias1": rng.standard_normal((1, 8, 1, 1)).astype(np.float32),
        "conv2": rng.standard_normal((6, 8, 1, 1)).astype(np.float32),
        "bias2": rng.standard_normal((1, 6, 1, 1)).astype(np.float32),
        "dense": rng.standard_normal((8 * 4 * 4, 5)).astype(np.float32),
    }


def _build(body) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(X_SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


ACTIVATIONS = {"relu": R.nn.relu, "relu6": lambda v: R.clip(v, R.prim_value(0.0), R.prim_value(6.0))}


def _conv1(bb, w, x, activation="relu"):
    conv = bb.emit(R.nn.conv2d(x, relax.const(w["conv1"]), padding=[1, 1, 1, 1]))
    biased = bb.emit(R.add(conv, relax.const(w["bias1"])))
    return bb.emit(ACTIVATIONS[activation](biased)) if activation else biased


def _two_convs(w, activation="relu") -> tvm.IRModule:
    """conv 3x3 + bias [+ activation] -> conv 1x1 + bias."""

    def body(bb, x):
        return R.add(R.nn.conv2d(_conv1(bb, w, x, activation), relax.const(w["conv2"])), relax.const(w["bias2"]))

    return _build(body)


def _pooled(w) -> tvm.IRModule:
    """conv 3x3 + bias + relu -> max_pool 2x2 -> reshape -> matmul."""

    def body(bb, x):
        pooled = bb.emit(R.nn.max_pool2d(_conv1(bb, w, x), pool_size=[2, 2], strides=[2, 2]))
        return R.matmul(bb.emit(R.reshape(pooled, (1, 128))), relax.const(w["dense"]))

    return _build(body)


def _residual(w) -> tvm.IRModule:
    """conv 3x3 + bias + relu = h -> conv 1x1 (8 channels) -> + h: h has a second user."""
    w2 = np.random.default_rng(5).standard_normal((8, 8, 1, 1)).astype(np.float32)
    return _build(lambda bb, x: R.add(R.nn.conv2d(h := _conv1(bb, w, x), relax.const(w2)), h))


def _dynamic(mod: tvm.IRModule, requantize: bool = True) -> tvm.IRModule:
    """``mod`` through the w8a8-dynamic pipeline (with DynamicRequantize, or without it)."""
    passes = PIPELINES["w8a8-dynamic"](PipelineOptions(get_scheme("w8a8-dynamic")))
    if not requantize:
        passes = [p for p in passes if p.info.name != "DynamicRequantize"]
    return tvm.transform.Sequential(passes)(mod)


def _bindings(mod: tvm.IRModule) -> dict:
    return {b.var: b.value for block in mod["main"].body.blocks for b in block.bindings}


def _calls(mod: tvm.IRModule, op: str) -> list[relax.Call]:
    return [v for v in _bindings(mod).values() if isinstance(v, relax.Call) and getattr(v.op, "name", None) == op]


def _uses(mod: tvm.IRModule) -> dict:
    counts: dict = {}
    for value in [*_bindings(mod).values(), mod["main"].body.body]:
        for var in relax.analysis.free_vars(value):
            counts[var] = counts.get(var, 0) + 1
    return counts


def _path_to_accumulator(mod: tvm.IRModule, layer: relax.Call) -> list[relax.Call]:
    """The calls from ``layer``'s input down to the int32 accumulator it is computed from (first argument each)."""
    values, path = _bindings(mod), []
    expr = layer.args[0]
    while expr in values and expr.ty.dtype != "int32":
        path.append(values[expr])
        expr = values[expr].args[0]
    assert expr.ty.dtype == "int32", f"{layer.op.name}'s input does not come from an int32 accumulator"
    return path


def _fused_tensors(mod: tvm.IRModule) -> list[tuple[str, str, tuple[int, ...]]]:
    """(kernel, dtype, shape) of each call_tir in ``main`` after the build's layout passes, FuseOps and FuseTIR."""
    target = tvm.target.Target(HOST)
    with target:
        passes = [*layout_passes(target), *cpu_generic.legalize_passes(target)]
        lowered = tvm.transform.Sequential(passes)(mod)
    return [
        (value.args[0].name_hint, str(var.ty.dtype), tuple(int(d) for d in var.ty.shape))
        for var, value in _bindings(lowered).items()
        if isinstance(value, relax.Call) and getattr(value.op, "name", None) == "relax.call_tir"
    ]


def _run(mod: tvm.IRModule, x: np.ndarray, target=HOST) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target(target)), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _samples():
    rng = np.random.default_rng(1)
    return [rng.standard_normal(X_SHAPE).astype(np.float32) for _ in range(3)]


# numpy emulation of the dynamic scheme: per-tensor run-time activation scales, per-channel weight scales


def _quantize(x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    max_abs = np.float32(max(np.abs(x).max(), EPSILON))
    return np.clip(np.round(x * (np.float32(127) / max_abs)), -127, 127).astype(np.int64), max_abs / np.float32(127)


def _conv_int(xq: np.ndarray, w: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 conv (stride 1) of int8 ``xq`` with ``w`` quantized per output channel: (accumulator, w_scale)."""
    wq, w_scale = quantize_weight(w, 0)
    x = np.pad(xq, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    kh, kw = w.shape[2:]
    oh, ow = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    acc = np.zeros((x.shape[0], w.shape[0], oh, ow), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            acc += np.einsum("nchw,oc->nohw", x[:, :, i : i + oh, j : j + ow], wq[:, :, i, j].astype(np.int64))
    return acc, w_scale.reshape(1, -1, 1, 1)


def _first_layer(w, x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """The float value of relu(conv1(x) + bias1) as the int8 scheme computes it, and the activation scale of x."""
    xq, x_scale = _quantize(x)
    acc, w_scale = _conv_int(xq, w["conv1"], pad=1)
    return np.maximum(acc.astype(np.float32) * x_scale * w_scale + w["bias1"], 0), x_scale


def _emulate_two_convs(w, x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """The output, and the dequantized size of one int8 step of the second layer's input (its effect bound)."""
    hq, h_scale = _quantize(_first_layer(w, x)[0])
    acc, w_scale = _conv_int(hq, w["conv2"], pad=0)
    step = h_scale * np.abs(w["conv2"]).sum(axis=(1, 2, 3)).max()
    return acc.astype(np.float32) * h_scale * w_scale + w["bias2"], step


def _emulate_pooled(w, x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    h = _first_layer(w, x)[0]
    flat = h.reshape(1, 8, 4, 2, 4, 2).max(axis=(3, 5)).reshape(1, 128)
    fq, f_scale = _quantize(flat)
    dq, d_scale = quantize_weight(w["dense"], 1)
    step = f_scale * np.abs(w["dense"]).sum(axis=0).max()
    return (fq @ dq.astype(np.int64)).astype(np.float32) * f_scale * d_scale, step


def _assert_within_one_step(got: np.ndarray, expected: np.ndarray, step: np.float32) -> None:
    """Every output within one int8 step of the layer input (rounding ties may go either way), most of them exact."""
    error = np.abs(got - expected)
    assert error.max() <= step * 1.001, (error.max(), step)
    assert np.mean(error <= 1e-4 * np.abs(expected).max()) > 0.9


def test_two_convs_pass_int8_from_accumulator_to_next_layer(weights):
    mod = _dynamic(_two_convs(weights))
    convs = _calls(mod, "relax.nn.conv2d")
    assert [(c.args[0].ty.dtype, c.ty.dtype) for c in convs] == [("int8", "int32"), ("int8", "int32")]
    path = _path_to_accumulator(mod, convs[1])
    names = [c.op.name for c in path]
    assert names[:3] == ["relax.astype", "relax.clip", "relax.round"] and names[-1] == "relax.astype"
    assert [float(a.value) for a in path[1].args[1:]] == [0.0, 127.0]  # ReLU folded into the clip
    assert _bindings(mod)[path[-1].args[0]].same_as(convs[0])
    uses = _uses(mod)
    assert all(uses[v] == 1 for v, value in _bindings(mod).items() if any(value.same_as(c) for c in path[1:]))
    # relu(conv1) is computed only on the per-channel extremes of the scale (below): the float tensor is gone
    assert [tuple(int(d) for d in c.ty.shape) for c in _calls(mod, "relax.nn.relu")] == [(1, 8, 1, 1)]
    # the run-time scale reads the accumulator as int32: per-channel extremes, reduced to a scalar in float
    (reduced,) = [c for c in _calls(mod, "relax.max") if c.args[0].ty.dtype == "int32"]
    assert [int(a) for a in reduced.attrs.axis] == [0, 2, 3] and reduced.ty.shape[1] == 8


def test_two_convs_build_writes_no_float32_tensor_between_the_layers(weights):
    before = _fused_tensors(_dynamic(_two_convs(weights), requantize=False))
    after = _fused_tensors(_dynamic(_two_convs(weights)))

    def float_tensors(kernels):  # float32 results larger than a per-channel vector
        return [(name, shape) for name, dtype, shape in kernels if dtype == "float32" and np.prod(shape) > 8]

    # before: relu(conv1) between the layers; after: only the model's output (NHWC, then transposed to NCHW)
    assert [shape for _, shape in float_tensors(before)] == [(1, 8, 8, 8), (1, 8, 8, 6), (1, 6, 8, 8)]
    assert [shape for _, shape in float_tensors(after)] == [(1, 8, 8, 6), (1, 6, 8, 8)]
    assert ("int32", (1, 8, 8, 8)) in [(dtype, shape) for _, dtype, shape in after]


@pytest.mark.parametrize("model, emulate", [(_two_convs, _emulate_two_convs), (_pooled, _emulate_pooled)])
def test_requantized_model_matches_numpy_emulation(weights, model, emulate):
    requantized = _dynamic(model(weights))
    for x in _samples():
        expected, step = emulate(weights, x)
        _assert_within_one_step(_run(requantized, x), expected, step)


def test_pool_and_reshape_move_across_the_quantize(weights):
    mod = _dynamic(_pooled(weights))
    (matmul,) = _calls(mod, "relax.matmul")
    path = _path_to_accumulator(mod, matmul)
    assert [(c.op.name, c.ty.dtype) for c in path[:2]] == [("relax.reshape", "int8"), ("relax.astype", "int8")]
    pooled = _bindings(mod)[path[-1].args[0]]  # pooling on the accumulator, before the dequantize
    assert pooled.op.name == "relax.nn.max_pool2d" and pooled.ty.dtype == "int32"
    kernels = _fused_tensors(mod)
    pools = [(dtype, shape) for name, dtype, shape in kernels if "pool" in name]
    assert pools == [("int32", (1, 4, 4, 8))]
    # float32 results: the (1, 5) output and scalars / per-channel vectors of the scale; without the pass, relu(conv1)
    assert not [shape for _, dtype, shape in kernels if dtype == "float32" and np.prod(shape) > 8]
    before = _fused_tensors(_dynamic(_pooled(weights), requantize=False))
    assert (1, 8, 8, 8) in [shape for _, dtype, shape in before if dtype == "float32"]


def test_without_activation_the_scale_takes_min_and_max(weights):
    """acc * A + B can be most negative: both extremes of each channel count."""
    mod = _dynamic(_two_convs(weights, activation=None))
    reductions = sorted(
        c.op.name for c in _calls(mod, "relax.max") + _calls(mod, "relax.min") if c.args[0].ty.dtype == "int32"
    )
    assert reductions == ["relax.max", "relax.min"]
    path = _path_to_accumulator(mod, _calls(mod, "relax.nn.conv2d")[1])
    assert [float(a.value) for a in path[1].args[1:]] == [-127.0, 127.0]
    x = _samples()[0]
    plain = _run(_dynamic(_two_convs(weights, activation=None), requantize=False), x)
    np.testing.assert_allclose(_run(mod, x), plain, rtol=1e-4, atol=1e-4 * np.abs(plain).max())


def test_value_with_a_second_user_keeps_its_float_form(weights):
    before = _dynamic(_residual(weights), requantize=False)
    tvm.ir.assert_structural_equal(DynamicRequantize()(before), before)


def test_float_layer_input_is_left_alone(weights):
    """The next layer's input comes from a float layer (kept float): no accumulator, nothing to rewrite."""
    passes = PIPELINES["w8a8-dynamic"](PipelineOptions(get_scheme("w8a8-dynamic"), keep_float=frozenset({"conv2d_0"})))
    without = [p for p in passes if p.info.name != "DynamicRequantize"]
    before = tvm.transform.Sequential(without)(_two_convs(weights))
    tvm.ir.assert_structural_equal(DynamicRequantize()(before), before)


def test_compiles_for_aarch64(weights):
    executable = tvm.compile(_dynamic(_pooled(weights)), target=tvm.target.Target(AARCH64))
    assert isinstance(executable, relax.VMExecutable)


def test_relu6_folds_into_the_clip_and_keeps_the_numbers(weights):
    """clip(0, 6): the scale is at most 6, so only the lower bound matters; ReLU6 is increasing: max alone."""
    mod = _dynamic(_two_convs(weights, activation="relu6"))
    path = _path_to_accumulator(mod, _calls(mod, "relax.nn.conv2d")[1])
    assert [float(a.value) for a in path[1].args[1:]] == [0.0, 127.0]
    assert not [c for c in _calls(mod, "relax.min") if c.args[0].ty.dtype == "int32"]
    plain = _dynamic(_two_convs(weights, activation="relu6"), requantize=False)
    for x in _samples():
        x = x * 4  # ReLU6 saturates for part of the outputs
        expected = _run(plain, x)
        np.testing.assert_allclose(_run(mod, x), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("requantize", [False, True])
def test_each_run_time_scale_is_one_reduction_kernel(weights, requantize):
    """``max(max(|x|, eps))``: the floor that keeps a zero tensor's scale finite is fused into the reduction. Applied
    to the reduced scalar, it was a kernel (and an allocation) of its own per layer input."""
    scalars = [name for name, _, shape in _fused_tensors(_dynamic(_two_convs(weights), requantize)) if shape == ()]
    floors = [name for name in scalars if "maximum" in name]
    assert len(floors) == 2 and all(name.endswith(("max", "max1", "max2")) for name in floors), scalars
    assert "maximum" not in scalars, scalars
