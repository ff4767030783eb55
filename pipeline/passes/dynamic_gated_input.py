"""DynamicGatedInput: a layer input gated per channel (squeeze-excite) is quantized without being written.

MobileNetV3-style blocks multiply a map ``h`` by per-channel gates ``s = hard_sigmoid(...)`` (``clip(v, 0, 1)``,
shape ``(1, C, 1, 1)``) and feed the product to the next conv. After ``DynamicQuantize`` the product
``x = h * s`` is a float32 map written to memory by one kernel, read by the scale's reduction
``max(max(|x|, eps))`` and read again by the quantize ``int8(clip(round(x * inv)))``, ``inv = 127 / max``.

Where every gate is non-negative, ``|h * s| = |h| * s`` and multiplying by ``s >= 0`` preserves order (also after
rounding to float32), so

    max|x| = max over channels c of  s[c] * max over the other axes of |h[..., c, ...]|

exactly, and the quantize becomes ``int8(clip(round(h * (s * inv))))``. Both read ``h``, which the block's
squeeze (a mean over ``h``) reads anyway; ``x`` is never formed, and the gates times ``inv`` are C numbers. The
product's kernel disappears (the gates' own kernel keeps the squeeze-excite's small convs). ``h * (s * inv)``
rounds once more than ``(h * s) * inv`` before ``round``: a value within an ulp of a half step may quantize to
the neighbouring integer.

Matched: ``x = multiply(h, s)`` (either order) with ``s`` a ``clip`` whose lower bound is >= 0, a ``relu`` or a
``sigmoid``, ``s`` of ``h``'s rank with each extent 1 or ``h``'s, smaller than ``h``, and ``x`` used only by the
scale's ``abs`` and the quantize's ``multiply``. Anything else keeps ``DynamicQuantize``'s form.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from edgetvm.pipeline.passes.bindings import BoundValues, mutate_main, number, op_name, static_shape

_NON_NEGATIVE = ("relax.nn.relu", "relax.sigmoid")


@tvm.transform.module_pass(opt_level=0, name="DynamicGatedInput")
class DynamicGatedInput:
    """Rewrite the scale and the quantize of each gated layer input (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return mutate_main(mod, _GatedInputRewriter)


@relax.expr_functor.mutator
class _GatedInputRewriter(relax.PyExprMutator):
    def __init__(self, func: relax.Function):
        super().__init__()
        self._bound = BoundValues(func)
        self._gated: dict[relax.Var, tuple[relax.Var, relax.Var, list[int]]] = {}  # x -> (h, s, axes of s's 1s)
        for block in func.body.blocks:
            for binding in block.bindings:
                gated = _gated_product(self._bound, binding.value)
                if gated is not None and self._bound.uses.get(binding.var, 0) == 2:
                    self._gated[binding.var] = gated

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        data = self._reduced_magnitude(call)
        if data is not None:
            h, s, axes = self._gated[data]
            floor = self._bound.of(call.args[0])
            gate_max = R.multiply(R.max(R.abs(self.visit_expr(h)), axes, keepdims=True), self.visit_expr(s))
            return R.max(R.maximum(gate_max, self.visit_expr(floor.args[1])))
        if op_name(call) == "relax.multiply" and call.args[0] in self._gated:
            h, s, _ = self._gated[call.args[0]]
            inv = self.visit_expr(call.args[1])
            return R.multiply(self.visit_expr(h), R.multiply(self.visit_expr(s), inv))
        return super().visit_call_(call)

    def _reduced_magnitude(self, call: relax.Call) -> relax.Var | None:
        """``x`` when ``call`` is ``max(maximum(abs(x), eps))`` over all axes with ``x`` a gated input."""
        if op_name(call) != "relax.max" or call.attrs.axis is not None:
            return None
        floor = self._bound.of(call.args[0])
        if op_name(floor) != "relax.maximum":
            return None
        magnitude = self._bound.of(floor.args[0])
        if op_name(magnitude) != "relax.abs" or magnitude.args[0] not in self._gated:
            return None
        return magnitude.args[0]


def _gated_product(bound: BoundValues, value: relax.Expr) -> tuple[relax.Var, relax.Var, list[int]] | None:
    """``(h, s, axes)`` when ``value`` is ``h * s`` with non-negative per-channel gates ``s`` (see the module
    docstring); ``axes``: where ``s`` has extent 1 and ``h`` does not."""
    if op_name(value) != "relax.multiply":
        return None
    for h, s in (value.args, reversed(value.args)):
        if not (isinstance(h, relax.Var) and isinstance(s, relax.Var)) or not _non_negative(bound, s):
            continue
        if any(getattr(e.ty, "dtype", None) != "float32" for e in (h, s, value)):
            continue
        h_shape, s_shape, shape = static_shape(h), static_shape(s), static_shape(value)
        if h_shape is None or s_shape is None or h_shape != shape or len(s_shape) != len(h_shape):
            continue
        if any(g not in (1, d) for g, d in zip(s_shape, h_shape, strict=True)):
            continue
        axes = [axis for axis, (g, d) in enumerate(zip(s_shape, h_shape, strict=True)) if g == 1 and d != 1]
        if axes and int(np.prod(s_shape)) < int(np.prod(h_shape)):
            return h, s, axes
    return None


def _non_negative(bound: BoundValues, gate: relax.Var) -> bool:
    value = bound.of(gate, uses=None)
    if op_name(value) == "relax.clip":
        low = number(value.args[1])
        return low is not None and low >= 0
    return op_name(value) in _NON_NEGATIVE
