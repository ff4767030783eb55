"""Requantize: int32 accumulators rescaled straight to the next layer's int8, and int8 through pooling / reshapes.

After ``StaticQuantize`` a layer feeding another reads, between the two int8 convs/matmuls::

    acc (int32) -> astype f32 -> * (s_x * s_w) -> + bias -> relu -> max_pool2d -> reshape -> / s_next -> round
                -> clip(-127, 127) -> astype int8 -> next layer

This pass rewrites the quantize of every layer input whose value comes from such a chain:

1. The quantize moves ahead of the ops that commute with a positive per-tensor scale and rounding
   (``max_pool2d``, ``reshape``, ``permute_dims``), so those run on int8 and activations travel as int8.
2. When what is then quantized is ``relu / clip(+ bias(acc * A))`` of a layer's accumulator, the dequantize
   and the quantize become one rescale ``round(acc * (A / s_next) + bias / s_next)`` clipped to int8, ReLU
   folded into the clip's lower bound: the int32 result goes to int8 with the next layer's scale in one
   elementwise step that FuseOps puts in the conv/matmul's epilogue. The float value exists only in registers
   there; no float32 tensor is written between the two layers.

Elementwise ops that cannot run on int8 (hard-swish, sigmoid, a residual add of two layers' outputs...) keep
the float dequantize -> op -> quantize form, which still fuses into the producing layer when it is the only
consumer. Values with other users keep their float version for those users.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from edgetvm.pipeline.calibration_stats import QMAX
from edgetvm.pipeline.passes.bindings import BoundValues, float32_constant, mutate_main, number, op_name
from edgetvm.pipeline.passes.static_quantize import quantize_static

# Ops that commute with quantization by a positive per-tensor scale: q(op(x)) == op(q(x)).
INT8_SAFE_OPS = ("relax.nn.max_pool2d", "relax.reshape", "relax.permute_dims")


@tvm.transform.module_pass(opt_level=0, name="Requantize")
class Requantize:
    """Rewrite the quantize of each layer input that follows another layer (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return mutate_main(mod, _Requantizer)


@relax.expr_functor.mutator
class _Requantizer(relax.PyExprMutator):
    def __init__(self, func: relax.Function):
        super().__init__()
        self._bound = BoundValues(func)

    def _quantize_root(self, call: relax.Call) -> tuple[relax.Expr, np.float32] | None:
        """``(x, s)`` when ``call`` is ``astype(clip(round(x / s), -127, 127), int8)`` (``quantize_static``)."""
        divide = self._bound.of(self._bound.rounded_to_int8(call), uses=None)
        if op_name(divide) != "relax.divide":
            return None
        scale = float32_constant(divide.args[1])
        if scale is None or scale.size != 1 or not float(scale) > 0:
            return None
        return divide.args[0], np.float32(scale.reshape(()))

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        root = self._quantize_root(call)
        if root is None:
            return super().visit_call_(call)
        data, scale = root
        moved: list[relax.Call] = []  # int8-safe ops between the quantize and what it quantizes, outermost first
        while (value := self._bound.of(data)) is not None and op_name(value) in INT8_SAFE_OPS:
            moved.append(value)
            data = value.args[0]
        result = self._rescale(data, scale)
        if result is None:
            if not moved:
                return super().visit_call_(call)
            result = quantize_static(self.visit_expr(data), scale)
        for op in reversed(moved):
            result = relax.Call(op.op, [result, *(self.visit_expr(a) for a in op.args[1:])], op.attrs)
        return result

    def _rescale(self, data: relax.Expr, scale: np.float32) -> relax.Expr | None:
        """``int8(clip(round(acc * A / s + B / s), lo, hi))`` when ``data`` is ``[relu|clip](acc * A [+ B])`` of
        an int32 accumulator ``acc``; None otherwise."""
        low, high = -float(QMAX), float(QMAX)
        value = self._bound.of(data)
        if op_name(value) == "relax.nn.relu":
            low, data = 0.0, value.args[0]
        elif op_name(value) == "relax.clip":
            bounds = [number(a) for a in value.args[1:]]
            if None in bounds:
                return None
            low = max(low, float(np.round(bounds[0] / scale)))
            high = min(high, float(np.round(bounds[1] / scale)))
            data = value.args[0]
        bias = None
        value = self._bound.of(data)
        if op_name(value) == "relax.add" and float32_constant(value.args[1]) is not None:
            bias, data = float32_constant(value.args[1]), value.args[0]
            value = self._bound.of(data)
        if op_name(value) != "relax.multiply" or float32_constant(value.args[1]) is None:
            return None
        multiplier = float32_constant(value.args[1])
        cast = self._bound.of(value.args[0])
        if op_name(cast) != "relax.astype" or cast.args[0].ty.dtype != "int32":
            return None
        rescaled = R.multiply(R.astype(self.visit_expr(cast.args[0]), "float32"), _const(multiplier / scale))
        if bias is not None:
            rescaled = R.add(rescaled, _const(bias / scale))
        return R.astype(R.clip(R.round(rescaled), R.prim_value(low), R.prim_value(high)), "int8")


def _const(array: np.ndarray) -> relax.Expr:
    return relax.const(np.asarray(array, dtype=np.float32))
