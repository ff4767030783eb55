"""ExposeLayerOutputs: ``main`` also returns every quantizable layer's output (and input), for per-layer accuracy.

Run on the float module, before quantization. ``main`` then returns a tuple: its original result first, then the
output of each layer (see ``quant_layers``) in key order, then, with ``with_inputs``, each layer's data input in
the same order. The exposed values are made outputs of their dataflow block; nothing else changes.

A quantization pass run afterwards rewrites the same layers (it sees the same keys: no conv2d or matmul is
added or removed), so the quantized module returns the quantized layers' float-valued outputs at the same
positions, and the two can be compared value by value.
"""

from __future__ import annotations

import tvm
from tvm import relax

from edgetvm.pipeline.passes.quant_layers import is_layer


@tvm.transform.module_pass(opt_level=0, name="ExposeLayerOutputs")
class ExposeLayerOutputs:
    """Append each layer's output (and, with ``with_inputs``, its data input) to ``main``'s result.

    ``main``'s result becomes ``(original result, out_0, ..., out_{n-1}[, in_0, ..., in_{n-1}])`` where layer
    ``i`` is the ``i``-th of ``quant_layers(mod)``.
    """

    def __init__(self, with_inputs: bool = False):
        self.with_inputs = with_inputs

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        func = mod["main"]
        calls = _layer_bindings(func)
        exposed = [var for var, _ in calls]
        if self.with_inputs:
            exposed += [call.args[0] for _, call in calls]
        mutator = _OutputExposer({e for e in exposed if isinstance(e, relax.Var)})
        rewritten = mutator.visit_expr(func)
        builder = relax.BlockBuilder()
        result = builder.normalize(relax.Tuple([rewritten.body.body, *(mutator.exposed.get(e, e) for e in exposed)]))
        body = builder.normalize(relax.SeqExpr(rewritten.body.blocks, result))
        updated = mod.clone()  # a module pass must not change the module it was given
        updated["main"] = relax.Function(rewritten.params, body, None, rewritten.is_pure, rewritten.attrs)
        return updated


def _layer_bindings(func: relax.Function) -> list[tuple[relax.Var, relax.Call]]:
    """(bound variable, call) of every layer, in binding order: the order ``quant_layers`` numbers them in."""
    if not isinstance(func.body, relax.SeqExpr):
        return []
    return [
        (binding.var, binding.value)
        for block in func.body.blocks
        for binding in block.bindings
        if isinstance(binding, relax.VarBinding) and is_layer(binding.value)
    ]


@relax.expr_functor.mutator
class _OutputExposer(relax.PyExprMutator):
    """Re-emits the bindings of ``watched`` variables as dataflow-block outputs; ``exposed`` maps old -> new."""

    def __init__(self, watched: set):
        super().__init__()
        self._watched = watched
        self.exposed: dict = {}

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self._watched and isinstance(binding.var, relax.DataflowVar):
            value = self.visit_expr(binding.value)
            self.set_var_remap(binding.var, self.builder_.emit_output(value, name_hint=binding.var.name))
        else:
            super().visit_var_binding_(binding)
        if binding.var in self._watched:
            self.exposed[binding.var] = self.visit_expr(binding.var)  # the (possibly) remapped variable
