"""Small facts about a Relax function's bindings, shared by the graph passes."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from edgetvm.pipeline.calibration_stats import QMAX


def mutate_main(mod: tvm.IRModule, mutator: type) -> tvm.IRModule:
    """A copy of ``mod`` whose ``main`` went through ``mutator(main)`` (a ``PyExprMutator`` built from the function
    it rewrites), then lost its dead bindings: what each graph pass that rewrites ``main`` returns."""
    updated = mod.clone()
    updated["main"] = mutator(mod["main"]).visit_expr(mod["main"])
    return relax.transform.DeadCodeElimination(["main"])(updated)


def static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    """The dimensions of ``expr``'s tensor; None when it is not a tensor or a dimension is not a constant."""
    return static_type_shape(expr.ty)


def static_type_shape(ty) -> tuple[int, ...] | None:
    """``static_shape`` of a type (a call's result types, before anything is bound to them)."""
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = getattr(ty.shape, "values", None)
    if dims is None or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    return tuple(int(d) for d in dims)


def op_name(expr: relax.Expr) -> str | None:
    """The operator's name when ``expr`` calls a Relax op (``relax.add``...), else None."""
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else None


def use_counts(func: relax.Function) -> dict[relax.Var, int]:
    """How many binding values (and the function's result) refer to each variable."""
    counts: dict[relax.Var, int] = {}
    exprs = [binding.value for block in func.body.blocks for binding in block.bindings] + [func.body.body]
    for expr in exprs:
        for var in relax.analysis.free_vars(expr):
            counts[var] = counts.get(var, 0) + 1
    return counts


def float32_constant(expr: relax.Expr) -> np.ndarray | None:
    """The value of a float32 constant, else None."""
    if isinstance(expr, tvm.ir.GenericConst) and expr.ty.dtype == "float32":
        return expr.value.numpy()
    return None


def number(expr: relax.Expr) -> float | None:
    """The number of clip's bound arguments (an ``IntImm`` / ``FloatImm``, or a ``PrimValue`` of one), else None."""
    while expr is not None and not isinstance(expr, int | float):
        expr = getattr(expr, "value", None)
    return None if expr is None else float(expr)


class BoundValues:
    """What each variable of ``func`` is bound to, and how many uses it has."""

    def __init__(self, func: relax.Function):
        self._values = relax.analysis.get_var2val(func)
        self.uses = use_counts(func)

    def of(self, expr: relax.Expr, uses: int | None = 1) -> relax.Expr | None:
        """The value bound to ``expr`` when it is a bound variable with exactly ``uses`` uses (None: any number)."""
        if not isinstance(expr, relax.Var) or expr not in self._values:
            return None
        if uses is not None and self.uses.get(expr, 0) != uses:
            return None
        return self._values[expr]

    def rounded_to_int8(self, call: relax.Expr) -> relax.Expr | None:
        """``v`` when ``call`` is ``astype(clip(round(v), -127, 127), int8)``, the quantize of static activation
        scales, or ``astype(round(v), int8)``, the dynamic one (its ``v`` is within [-127, 127] by construction);
        else None."""
        if op_name(call) != "relax.astype" or str(call.attrs.dtype) != "int8":
            return None
        rounded = self.of(call.args[0], uses=None)
        if op_name(rounded) == "relax.clip":
            if [number(a) for a in rounded.args[1:]] != [-QMAX, QMAX]:
                return None
            rounded = self.of(rounded.args[0], uses=None)
        return rounded.args[0] if op_name(rounded) == "relax.round" else None
