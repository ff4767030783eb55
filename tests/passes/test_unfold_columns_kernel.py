"""UnfoldColumnsKernel: the column unfold ``UnfoldNarrowConv`` writes as pad / strided slices / concat / pad runs
as one indexed-copy kernel after the layout passes, with the same values."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from edgetvm.kernels_schedules.pipeline import layout_passes, relax_pipeline
from edgetvm.pipeline.passes.unfold_narrow_conv import UnfoldNarrowConv
from edgetvm.targets.presets import resolve_target

RNG = np.random.default_rng(3)


def _conv_module(layout: str, shape, kernel: int, stride: int, padding):
    weight_shape = (kernel, kernel, 3, 24) if layout == "NHWC" else (24, 3, kernel, kernel)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = relax.op.nn.conv2d(
                x,
                relax.const(RNG.standard_normal(weight_shape).astype("float32")),
                strides=stride,
                padding=padding,
                data_layout=layout,
                kernel_layout="HWIO" if layout == "NHWC" else "OIHW",
            )
            out = bb.emit_output(relax.op.nn.relu(conv))
        bb.emit_func_output(out)
    return bb.get()


def _ops(mod) -> list[str]:
    names = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call):
                op = value.op
                names.append(op.name if isinstance(op, tvm.ir.Op) else "")
                if op.name == "relax.call_tir":
                    names[-1] = value.args[0].name_hint
    return names


def _laid_out(mod, target):
    with target:
        return tvm.transform.Sequential(layout_passes(target))(mod)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize(
    "kernel, stride, padding",
    [(5, 2, [1, 1, 2, 2]), (7, 2, [3, 3, 3, 3]), (5, 1, [2, 0, 2, 1]), (7, 3, [0, 0, 0, 0])],
)
def test_the_unfold_becomes_one_kernel_with_the_same_output(layout, kernel, stride, padding):
    shape = (1, 61, 67, 3) if layout == "NHWC" else (1, 3, 61, 67)  # over UnfoldNarrowConv.MIN_MACS
    original = _conv_module(layout, shape, kernel, stride, padding)
    unfolded = UnfoldNarrowConv(16)(original)
    target = resolve_target("x86").tvm_target()
    ops = _ops(_laid_out(unfolded, target))
    assert ops.count("unfold_columns") == 1
    assert not {"relax.concat", "relax.strided_slice", "relax.nn.pad"} & set(ops), ops
    x = RNG.standard_normal(shape).astype("float32")
    built = tvm.compile(unfolded, target, relax_pipeline=relax_pipeline(target))
    actual = relax.VirtualMachine(built, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    reference = relax.VirtualMachine(tvm.compile(original, "llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(actual, reference, rtol=1e-5, atol=1e-4)


def test_other_concats_of_column_slices_stay_as_they_are():
    """Slices out of kernel-column order (or of two tensors) are not an unfold: the ops stay."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 9, 3), "float32"))
    y = relax.Var("y", relax.TensorType((1, 8, 9, 3), "float32"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            shuffled = [
                bb.emit(relax.op.strided_slice(x, axes=[2], begin=[b], end=[b + 7], strides=[2])) for b in (1, 0, 2)
            ]
            mixed = [
                bb.emit(relax.op.strided_slice(t, axes=[2], begin=[b], end=[b + 7], strides=[2]))
                for t, b in ((x, 0), (y, 1))
            ]
            first = bb.emit(relax.op.concat(shuffled, axis=3))
            second = bb.emit(relax.op.concat(mixed, axis=3))
            out = bb.emit_output(relax.Tuple([first, second]))
        bb.emit_func_output(out)
    ops = _ops(_laid_out(bb.get(), resolve_target("x86").tvm_target()))
    assert ops.count("relax.concat") == 2 and "unfold_columns" not in ops


def _quantized_first_layer(scheme_name: str):
    """BlazeFace's first layer (5x5 stride 2 over RGB, unfolded) quantized by ``scheme_name``, and its input."""
    import dataclasses

    from edgetvm.pipeline.calibration_stats import CalibrationMethod, CalibrationRanges, LayerRange
    from edgetvm.pipeline.ingest import ImportedModel
    from edgetvm.pipeline.quantize import quantize
    from edgetvm.pipeline.schemes import get_scheme

    mod = _conv_module("NHWC", (1, 64, 64, 3), 5, 2, [1, 1, 2, 2])
    fields = {f.name: None for f in dataclasses.fields(ImportedModel)}
    imported = ImportedModel(**{**fields, "path": "first-layer.tflite", "mod": mod})
    x = RNG.uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    ranges = CalibrationRanges(CalibrationMethod.MINMAX, 1, {"conv2d_0": LayerRange(-1.0, 1.0, 1.0)}, "")
    scheme = get_scheme(scheme_name)
    calibration = ranges if scheme.activation_mode == "static" else None
    return quantize(imported, scheme, calibration=calibration).mod, x


@pytest.mark.parametrize("scheme", ["w8a8-static", "w8a8-dynamic"])
@pytest.mark.parametrize("target_name", ["x86", "rpi4"])
def test_int8_builds_quantize_the_input_before_the_unfold(scheme, target_name):
    """The quantize (and, dynamic, the max|x| its scale comes from) read the 64x64x3 input, not the 32x64x16
    unfolded copy; the unfold copies int8 (uint8 for VNNI) values, the padding filled with the value zero takes."""
    quantized, x = _quantized_first_layer(scheme)
    target = resolve_target(target_name).tvm_target()
    laid_out = _laid_out(quantized, target)
    calls = {
        binding.var: binding.value
        for block in laid_out["main"].body.blocks
        for binding in block.bindings
        if isinstance(binding.value, relax.Call)
    }
    unfolds = [c for c in calls.values() if c.op.name == "relax.call_tir" and "unfold" in c.args[0].name_hint]
    assert len(unfolds) == 1
    unfold_input = unfolds[0].args[1].fields[0]
    assert [int(d) for d in unfold_input.ty.shape] == [1, 64, 64, 3]
    assert str(unfold_input.ty.dtype) in ("int8", "uint8")
    full_maxes = [c for c in calls.values() if c.op.name == "relax.max"]
    if scheme == "w8a8-dynamic":
        assert [[int(d) for d in c.args[0].ty.shape] for c in full_maxes] == [[1, 64, 64, 3]]
    if target_name == "x86":  # run it: the same numbers as TVM's own build of the quantized module
        built = tvm.compile(quantized, target, relax_pipeline=relax_pipeline(target))
        actual = relax.VirtualMachine(built, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
        plain = relax.VirtualMachine(tvm.compile(quantized, "llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_allclose(actual, plain, rtol=1e-5, atol=1e-5)
