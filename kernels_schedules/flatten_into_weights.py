"""Pass: a flatten of a transposed map into a matmul reads the map as stored; the weights' rows are permuted.

An ONNX CNN flattens its last NCHW map into a matmul (``Flatten`` + ``Gemm``). Once ``ConvertLayout`` has made
the convs NHWC, the flatten reads ``permute_dims(x, [0, 3, 1, 2])`` first: a transpose kernel per run (0.7 us
of the trained CNN's 8-10, more where a quantize is fused into it). The matmul sums products over the flattened
index, so the order of that index is free: with the weights' rows permuted to the map's stored order, the
flatten is a reshape of ``x`` itself, which costs nothing.

Matched: ``matmul(reshape(permute_dims(x, axes), [N, K]), W)`` with ``axes[0] == 0`` (the batch stays first),
``N * K`` the map's size, ``W`` a constant ``[K, M]`` (any dtype: float, or int8 before ``Int8ConvLayout``),
the transpose and the reshape used once. The product's values are unchanged (the same terms, summed in another
order: float results may differ in the last bits).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from edgetvm.pipeline.passes.bindings import BoundValues, mutate_main, op_name, static_shape


@mutator
class _FlattenRewriter(PyExprMutator):
    def __init__(self, func: relax.Function):
        super().__init__()
        self._bound = BoundValues(func)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        found = _match(self._bound, call)
        if found is None:
            return super().visit_call_(call)
        x, rows, weight = found
        shape = static_shape(call.args[0])
        flat = relax.op.reshape(self.visit_expr(x), shape)
        permuted = np.empty_like(weight)
        permuted[rows] = weight
        return relax.op.matmul(flat, relax.const(permuted), out_dtype=call.attrs.out_dtype)


def _match(bound: BoundValues, call: relax.Call) -> tuple[relax.Expr, np.ndarray, np.ndarray] | None:
    """``(x, rows, W)``: row ``k`` of ``W`` multiplies element ``rows[k]`` of ``x``'s flattened (stored) map."""
    if op_name(call) != "relax.matmul" or not isinstance(call.args[1], tvm.ir.GenericConst):
        return None
    weight = call.args[1].value.numpy()
    flat = bound.of(call.args[0])
    if op_name(flat) != "relax.reshape" or weight.ndim != 2:
        return None
    transposed = bound.of(flat.args[0])
    if op_name(transposed) != "relax.permute_dims" or transposed.attrs.axes is None:
        return None
    axes = [int(a) for a in transposed.attrs.axes]
    x_shape, flat_shape = static_shape(transposed.args[0]), static_shape(flat)
    if x_shape is None or flat_shape is None or len(flat_shape) != 2 or axes[0] != 0:
        return None
    if flat_shape[0] != x_shape[0] or flat_shape[1] != weight.shape[0] or np.prod(x_shape) != np.prod(flat_shape):
        return None
    per_item = x_shape[1:]
    rows = np.arange(int(np.prod(per_item))).reshape(per_item).transpose([a - 1 for a in axes[1:]]).reshape(-1)
    return transposed.args[0], rows, weight


@tvm.transform.module_pass(opt_level=0, name="FlattenIntoWeights")
class FlattenIntoWeights:
    """Fold the transpose before each flattened matmul into its weights (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return mutate_main(mod, _FlattenRewriter)
