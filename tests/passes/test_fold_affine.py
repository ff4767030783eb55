"""FoldAffine: batch-norm / dequantize / hard-swish constants collapsed to one multiply-add, folded into weights."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from edgetvm.kernels_schedules.fold_affine import FoldAffine

RNG = np.random.default_rng(0)


def _const(array):
    return relax.const(np.asarray(array, dtype="float32"))


def _ops(mod) -> list[str]:
    names = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
                names.append(value.op.name.removeprefix("relax."))
    return names


def _run(mod, x):
    executable = tvm.compile(mod, target="llvm")
    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def _folded(mod):
    return relax.transform.FoldConstant()(FoldAffine()(mod))


def _conv_bn_hardswish(weight, in_dtype="float32", out_dtype=None):
    """conv2d -> (x - mean) / std * gamma + beta -> hard-swish -> * 0.5, as DecomposeOpsForInference leaves it."""
    mean, std, gamma, beta = (RNG.random((1, weight.shape[0], 1, 1)) + 0.5 for _ in range(4))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, weight.shape[1], 10, 10], in_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = relax.op.nn.conv2d(x, relax.const(weight), padding=[1, 1, 1, 1], out_dtype=out_dtype or in_dtype)
            y = bb.emit(conv)
            if out_dtype == "int32":
                y = bb.emit(relax.op.multiply(relax.op.astype(y, "float32"), _const(0.02)))
            y = bb.emit(relax.op.subtract(y, _const(mean)))
            y = bb.emit(relax.op.divide(y, _const(std)))
            y = bb.emit(relax.op.multiply(y, _const(gamma)))
            y = bb.emit(relax.op.add(y, _const(beta)))
            gate = bb.emit(relax.op.minimum(relax.op.maximum(relax.op.add(y, _const(3)), _const(0)), _const(6)))
            out = bb.emit(relax.op.divide(relax.op.multiply(y, gate), _const(6)))
            out = bb.emit_output(relax.op.multiply(out, _const(0.5)))
        bb.emit_func_output(out)
    return bb.get()


def test_batch_norm_folds_into_float_conv_weights():
    weight = RNG.standard_normal((8, 4, 3, 3)).astype("float32")
    mod = _conv_bn_hardswish(weight)
    folded = _folded(mod)
    ops = _ops(folded)
    # The batch norm's scale went into the weights, its shift is one bias add; /6 and *0.5 are one multiply.
    assert ops.count("nn.conv2d") == 1 and "divide" not in ops and "subtract" not in ops, ops
    assert ops == ["nn.conv2d", "add", "add", "maximum", "minimum", "multiply", "multiply"], ops
    x = RNG.standard_normal((1, 4, 10, 10)).astype("float32")
    np.testing.assert_allclose(_run(folded, x), _run(mod, x), rtol=1e-5, atol=1e-5)


def test_int8_layer_keeps_its_weights_and_gets_one_multiply_add():
    weight = RNG.integers(-127, 128, (8, 4, 3, 3)).astype("int8")
    mod = _conv_bn_hardswish(weight, in_dtype="int8", out_dtype="int32")
    folded = _folded(mod)
    ops = _ops(folded)
    assert ops[:4] == ["nn.conv2d", "astype", "multiply", "add"] and "divide" not in ops, ops
    conv = next(b.value for blk in folded["main"].body.blocks for b in blk.bindings if "conv2d" in str(b.value.op))
    np.testing.assert_array_equal(conv.args[1].value.numpy(), weight)
    x = RNG.integers(-127, 128, (1, 4, 10, 10)).astype("int8")
    np.testing.assert_allclose(_run(folded, x), _run(mod, x), rtol=1e-5, atol=1e-4)


def test_value_with_two_users_is_not_folded_through():
    """``y = x * 2`` feeds both ``y + 1`` and the output: ``y + 1`` starts from ``y`` rather than recomputing it."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4, 8], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.exp(x))
            y = bb.emit(relax.op.multiply(y, _const(2)))
            z = bb.emit(relax.op.divide(relax.op.add(y, _const(1)), _const(4)))
            out = bb.emit_output(relax.op.concat([y, z]))
        bb.emit_func_output(out)
    mod = bb.get()
    folded = _folded(mod)
    assert _ops(folded) == ["exp", "multiply", "multiply", "add", "concat"], _ops(folded)
    x = RNG.standard_normal((4, 8)).astype("float32")
    np.testing.assert_allclose(_run(folded, x), _run(mod, x), rtol=1e-6)


def test_constant_minus_x_and_broadcast_shapes():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([2, 3], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.subtract(_const([1.0, 2.0, 3.0]), relax.op.exp(x)))
            y = bb.emit(relax.op.multiply(y, _const([[2.0], [4.0]])))
            out = bb.emit_output(relax.op.divide(y, _const(8.0)))
        bb.emit_func_output(out)
    mod = bb.get()
    folded = _folded(mod)
    assert _ops(folded) == ["exp", "multiply", "add"], _ops(folded)
    x = RNG.standard_normal((2, 3)).astype("float32")
    np.testing.assert_allclose(_run(folded, x), _run(mod, x), rtol=1e-6)


def test_a_scale_after_a_gated_product_moves_onto_the_gate():
    """``round(h * g / s)`` with a per-channel gate ``g`` (a squeeze-excite's, quantized for the next int8 layer):
    the scale joins the gate's few values, one multiply per map element fewer; a product of equal shapes, or
    followed by a shift too, keeps its form."""
    bb = relax.BlockBuilder()
    h = relax.Var("h", relax.TensorType([1, 2, 6, 8], "float32"))
    with bb.function("main", [h]):
        with bb.dataflow():
            gate = bb.emit(relax.op.sigmoid(relax.op.mean(h, axis=[1, 2], keepdims=True)))
            product = bb.emit(relax.op.multiply(h, gate))
            scaled = bb.emit(relax.op.divide(product, _const(0.05)))
            twice = bb.emit(relax.op.add(relax.op.multiply(relax.op.multiply(h, h), _const(2.0)), _const(1.0)))
            out = bb.emit_output(relax.op.add(relax.op.round(scaled), twice))
        bb.emit_func_output(out)
    mod = bb.get()
    folded = _folded(mod)
    products = [
        b.value
        for block in folded["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.multiply"
    ]
    map_products = [p for p in products if [int(d) for d in p.ty.shape] == [1, 2, 6, 8]]
    # h * (g * 20), h * h, (h * h) * 2: the gated product's scale is on the gate, the square's stays on the map
    assert len(map_products) == 3 and any([int(d) for d in p.ty.shape] == [1, 1, 1, 8] for p in products), folded
    x = RNG.standard_normal((1, 2, 6, 8)).astype("float32")
    np.testing.assert_allclose(_run(folded, x), _run(mod, x), rtol=1e-5, atol=1.0)
    assert np.mean(_run(folded, x) != _run(mod, x)) < 0.01  # rounding moves only at half steps
