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
