"""JoinQuantizeOutputs: a layer output that feeds both the next int8 layer and a residual add is written and
quantized by one kernel, and a float layer output that the next layer quantizes dynamically is written and reduced
to its ``max|y|`` by one, with the same numbers as the two kernels each replaces."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.script import relax as R

from edgetvm.kernels_schedules import pipeline as kernels_pipeline
from edgetvm.kernels_schedules.fused_calls import kernel_calls
from edgetvm.pipeline.calibration_stats import CalibrationMethod, CalibrationRanges, LayerRange
from edgetvm.pipeline.passes import DynamicQuantize, Requantize, StaticQuantize

X_SHAPE = (1, 8, 8, 8)
HOST = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})


def _residual_block() -> tvm.IRModule:
    """y = conv 3x3 (8 -> 16) + bias; out = conv 1x1 (16 -> 16) of y + y: y has two users, one quantized."""
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(X_SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = R.nn.conv2d(x, relax.const(rng.standard_normal((16, 8, 3, 3)).astype("float32")), padding=[1] * 4)
            y = bb.emit(R.add(conv, relax.const(rng.standard_normal((1, 16, 1, 1)).astype("float32"))))
            branch = bb.emit(R.nn.conv2d(y, relax.const(rng.standard_normal((16, 16, 1, 1)).astype("float32"))))
            out = bb.emit_output(R.add(branch, y))
        bb.emit_func_output(out)
    layers = {"conv2d_0": LayerRange(-4.0, 4.0, 4.0), "conv2d_1": LayerRange(-30.0, 30.0, 30.0)}
    ranges = CalibrationRanges(CalibrationMethod.MINMAX, 1, layers, "sha")
    return tvm.transform.Sequential([StaticQuantize(ranges), Requantize()])(bb.get())


def _dynamic_block() -> tvm.IRModule:
    """y = depthwise 3x3 over 16 channels + bias (float: x86 leaves depthwise convs float); out = 1x1 conv
    (16 -> 16) of y quantized at run time: y is read by its max|y| reduction and by the quantize."""
    rng = np.random.default_rng(1)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 24, 24), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            weight = relax.const(rng.standard_normal((16, 1, 3, 3)).astype("float32"))
            conv = R.nn.conv2d(x, weight, padding=[1] * 4, groups=16)
            y = bb.emit(R.add(conv, relax.const(rng.standard_normal((1, 16, 1, 1)).astype("float32"))))
            out = bb.emit_output(R.nn.conv2d(y, relax.const(rng.standard_normal((16, 16, 1, 1)).astype("float32"))))
        bb.emit_func_output(out)
    return DynamicQuantize(keep_float=frozenset({"conv2d_0"}))(bb.get())


def _fused(mod: tvm.IRModule, join: bool) -> tvm.IRModule:
    with HOST:
        # JoinQuantizeOutputs alone: QuantizeInConsumer (its own tests) would also join the quantize with its layer
        passes = [p for p in kernels_pipeline.fusion_passes(HOST) if p.info.name != "QuantizeInConsumer"]
        fusion = passes if join else cpu_generic.legalize_passes(HOST)
        return tvm.transform.Sequential([*kernels_pipeline.layout_passes(HOST), *fusion])(mod)


def test_the_layer_output_and_its_quantize_are_one_kernel():
    mod = _residual_block()
    apart, joined = kernel_calls(_fused(mod, join=False)), kernel_calls(_fused(mod, join=True))
    assert len(joined) == len(apart) - 1, (apart, joined)
    (both,) = [ty for name, ty in joined.items() if name.endswith("_quantized")]
    assert isinstance(both, relax.TupleType) and [f.dtype for f in both.fields][0] == "float32"
    assert both.fields[1].dtype in ("int8", "uint8", "int16"), both  # the next layer's int8 (as its kernel reads it)


@pytest.mark.parametrize("block, shape", [("residual", X_SHAPE), ("dynamic", (1, 16, 24, 24))])
def test_joined_build_gives_the_same_numbers(monkeypatch, block, shape):
    mod = {"residual": _residual_block, "dynamic": _dynamic_block}[block]()
    joined = relax.VirtualMachine(
        tvm.compile(mod, target=HOST, relax_pipeline=kernels_pipeline.relax_pipeline(HOST)), tvm.cpu()
    )
    monkeypatch.setattr(kernels_pipeline, "fusion_passes", cpu_generic.legalize_passes)
    apart = relax.VirtualMachine(
        tvm.compile(mod, target=HOST, relax_pipeline=kernels_pipeline.relax_pipeline(HOST)), tvm.cpu()
    )
    for seed in range(3):
        x = tvm.runtime.tensor(np.random.default_rng(seed).standard_normal(shape).astype("float32"))
        np.testing.assert_array_equal(joined["main"](x).numpy(), apart["main"](x).numpy())


@pytest.mark.parametrize("target", [{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}])
def test_joined_build_compiles_for_arm(target):
    target = tvm.target.Target(target)
    tvm.compile(_residual_block(), target=target, relax_pipeline=kernels_pipeline.relax_pipeline(target))


def test_a_float_layer_output_and_its_dynamic_scale_are_one_kernel():
    mod = _dynamic_block()
    apart, joined = kernel_calls(_fused(mod, join=False)), kernel_calls(_fused(mod, join=True))
    assert len(joined) == len(apart) - 1, (apart, joined)
    (both,) = [ty for name, ty in joined.items() if name.endswith("_quantized")]
    assert isinstance(both, relax.TupleType) and [len(f.shape) for f in both.fields] == [4, 0], both  # (y, max|y|)
