"""FlattenIntoWeights: a CNN's flatten of its last NCHW map into a matmul reads the NHWC map as stored, the
transpose folded into the weights' row order."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from edgetvm.kernels_schedules.pipeline import layout_passes, relax_pipeline
from edgetvm.targets.presets import resolve_target

RNG = np.random.default_rng(5)
X86 = resolve_target("x86").tvm_target()


def _cnn_head(dtype: str, in_channels: int = 4, height: int = 7, width: int = 5):
    """NCHW conv -> relu -> flatten -> matmul, as ONNX ``Conv``, ``Relu``, ``Flatten``, ``Gemm`` import."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3, height, width), "float32"))
    features = in_channels * height * width
    conv_weight = RNG.standard_normal((in_channels, 3, 3, 3)).astype("float32")
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, relax.const(conv_weight), padding=[1, 1, 1, 1])))
            if dtype == "int8":
                conv = bb.emit(relax.op.astype(relax.op.clip(relax.op.round(conv), -127, 127), "int8"))
            flat = bb.emit(relax.op.reshape(conv, (2, features)))
            weight = RNG.integers(-127, 128, (features, 6)) if dtype == "int8" else RNG.standard_normal((features, 6))
            out_dtype = "int32" if dtype == "int8" else None
            out = bb.emit_output(relax.op.matmul(flat, relax.const(weight.astype(dtype)), out_dtype=out_dtype))
        bb.emit_func_output(out)
    return bb.get()


def _transposes(mod) -> int:
    return sum(
        isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.permute_dims"
        for block in mod["main"].body.blocks
        for b in block.bindings
    )


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_the_flatten_reads_the_map_as_stored_with_the_same_product(dtype):
    mod = _cnn_head(dtype)
    with X86:
        laid_out = tvm.transform.Sequential(layout_passes(X86))(mod)
    assert _transposes(laid_out) == 1  # only the input's, to NHWC; the flatten's transpose is gone
    x = RNG.uniform(-2, 2, (2, 3, 7, 5)).astype("float32")
    built = tvm.compile(mod, X86, relax_pipeline=relax_pipeline(X86))
    actual = relax.VirtualMachine(built, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    reference = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    if dtype == "int8":
        np.testing.assert_array_equal(actual, reference)
    else:
        np.testing.assert_allclose(actual, reference, rtol=1e-5, atol=1e-4)


def test_a_flatten_that_moves_the_batch_is_left_alone():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 4, 3), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            flat = bb.emit(relax.op.reshape(relax.op.permute_dims(x, [1, 0, 2]), (4, 6)))
            out = bb.emit_output(relax.op.matmul(flat, relax.const(RNG.standard_normal((6, 5)).astype("float32"))))
        bb.emit_func_output(out)
    from edgetvm.kernels_schedules.flatten_into_weights import FlattenIntoWeights

    assert _transposes(FlattenIntoWeights()(bb.get())) == 1
