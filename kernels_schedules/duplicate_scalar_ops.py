"""Pass: a one-value operation with several users is computed once per user.

Dynamic quantization computes a layer's scales at run time: ``s = max|x| / 127`` feeds both the next layer's
dequantize and the scale of its output. ``FuseOps`` fuses an elementwise producer into its consumer only when it
has one, so such a scalar became a kernel of its own between two others: the trained CNN's ``w8a8-dynamic``
build ran a ``multiply1`` of one float (0.15 us alone, a call and a buffer in the VM's plan). Copied for each
user, each copy fuses into its user's kernel, where it costs one instruction per call (LLVM hoists it out of the
loops).

Taken: a binding of a Relax operator whose result and every tensor argument hold at most one element (so a
reduction of a larger tensor to one value is not copied), used by two or more bindings of a dataflow block.
Run before ``LegalizeOps``.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from edgetvm.pipeline.passes.bindings import static_shape, use_counts


def _one_value(expr: relax.Expr) -> bool:
    shape = static_shape(expr)
    return shape is not None and int(np.prod(shape)) <= 1


def _copyable(value: relax.Expr) -> bool:
    if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)) or not _one_value(value):
        return False
    return all(_one_value(arg) for arg in value.args if isinstance(arg.ty, relax.TensorType))


@mutator
class _Duplicator(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, func: relax.Function):
        super().__init__(mod)
        uses = use_counts(func)
        self.copyable = {
            binding.var: binding.value
            for block in func.body.blocks
            if isinstance(block, relax.DataflowBlock)
            for binding in block.bindings
            if isinstance(binding, relax.VarBinding) and uses.get(binding.var, 0) >= 2 and _copyable(binding.value)
        }

    def visit_dataflow_var_(self, var: relax.DataflowVar) -> relax.Expr:
        value = self.copyable.get(var)
        if value is None:
            return super().visit_dataflow_var_(var)
        return self.builder_.emit(self.visit_expr(value))


@tvm.transform.module_pass(opt_level=0, name="DuplicateScalarOps")
class DuplicateScalarOps:
    """The pass; use as ``DuplicateScalarOps()``."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updated = mod.clone()
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
                duplicator = _Duplicator(mod, func)
                if duplicator.copyable:
                    updated[gvar] = duplicator.visit_expr(func)
        return relax.transform.DeadCodeElimination()(updated)
