"""Small facts about a Relax function's bindings, shared by the graph passes."""

from __future__ import annotations

import tvm
from tvm import relax


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
