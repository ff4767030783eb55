"""Pass: ``relax.clip`` with constant bounds as ``minimum(maximum(x, lo), hi)``.

``relax.clip`` has no layout inference, so converting a network to NHWC wraps every ReLU6 / hard-sigmoid in a
pair of transposes; the elementwise ``maximum``/``minimum`` ops carry layouts through and fuse into conv epilogues.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator


@mutator
class _ClipRewriter(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.clip"):
            return call
        x, lo, hi = call.args
        dtype = x.ty.dtype
        result = relax.op.maximum(x, relax.const(float(lo.value), dtype))
        return relax.op.minimum(result, relax.const(float(hi.value), dtype))


@tvm.transform.module_pass(opt_level=0, name="ClipToMinMax")
class ClipToMinMax:
    """The pass; use as ``ClipToMinMax()`` like TVM's own."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = _ClipRewriter(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return rewriter.builder_.get()
