"""DynamicRequantize: a layer's int32 accumulator quantized straight to the next layer's int8 with a run-time scale.

After ``DynamicQuantize`` a layer feeding another reads, between the two int8 convs/matmuls::

    acc (int32) -> astype f32 -> * x_scale * w_scale -> + bias -> relu -> [max_pool2d] -> [reshape]
        -> x;  s = max(max(|x|, eps));  int8(clip(round(x * (127 / s)), -127, 127)) -> next layer

and the float32 ``x`` is written to memory between the layers: once for the reduction, once more for the quantize.
This pass rewrites the quantize of every such layer input (``[relu|clip(0, hi)](affine(acc))``, the affine ops
having constant or run-time scalar operands, each value on the way used only there):

1. The quantize reads the accumulator: ``int8(clip(round(affine(acc) * inv), lo, 127))`` with the run-time
   ``inv = 127 / s``, ReLU folded into the clip's lower bound (``lo = 0``). ``clip(0, hi)`` (ReLU6) folds the same
   way: ``s`` is the largest value of the clipped tensor, so ``s <= hi`` and the upper bound never binds below 127.
   FuseOps makes this one elementwise kernel from int32 to int8; the float values exist only in registers.
2. The scale's reduction reads the accumulator too, and only as int32: ``x`` is ``act(a * A[c] + B[c])`` of
   each accumulator value ``a`` in channel ``c``, a monotonic function of ``a`` (the chain's constants are per
   channel, the activation clamps), so ``max|x|`` is reached at a channel's largest or smallest accumulator. The
   reduction becomes ``max`` (and ``min``, unless ReLU after positive multipliers makes ``max`` enough) of the
   accumulator per channel, then the dequantize and ``|.|`` on those few values: the same ``s`` (same float ops on
   the same extreme value), no float32 tensor, integer reductions instead of float ones. (A second copy of the
   dequantize feeding a float reduction would not do: the pattern rewrites of the build eliminate common
   subexpressions, and the two copies would merge back into one float32 tensor written between the layers.)
   The next layer dequantizes with the same run-time scale (``s / 127 * w_scale``) as before.
3. ``reshape`` / ``permute_dims`` between ``x`` and the quantize move after it and run on int8.
4. ``max_pool2d`` moves *before* the dequantize and runs on the int32 accumulator: ``max`` commutes with any
   increasing function, and ``relu(acc * A + B)`` increases with ``acc`` in every channel when the multipliers are
   positive (weight scales and run-time scales are; other constants are checked). The quantize moved past the
   pool instead (pooling int8) would need the scale of the tensor before pooling: four times as many elements
   for the reduction and the quantize to read, and a coarser scale when the windows do not cover the input. On
   the pooled accumulator the scale is that of the pooled tensor, exactly as without this pass.

Elementwise ops that cannot run on int8 (hard-swish, sigmoid, a residual add of two layers' outputs...) and values
with other users (a residual, a second consumer) keep DynamicQuantize's float form; so does every layer input that
does not come from an int32 accumulator, and every input quantized per row (``DynamicQuantize(per_row=True)``): a
row's scale is the largest over all of its channels, each dequantized with its own constants, so the float row is
needed whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from edgetvm.pipeline.passes.bindings import QMAX, BoundValues, float32_constant, mutate_main, number, op_name

_LAYOUT_OPS = ("relax.reshape", "relax.permute_dims")  # after the quantize: they need no channel axis
_POOL = "relax.nn.max_pool2d"  # before the dequantize, on the accumulator
_AFFINE_OPS = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")


@tvm.transform.module_pass(opt_level=0, name="DynamicRequantize")
class DynamicRequantize:
    """Rewrite the run-time quantize of each layer input that follows another layer (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return mutate_main(mod, _DynamicRequantizer)


@dataclass(frozen=True)
class _Match:
    """A quantized layer input ``layout(pool(activation(chain(astype(acc)))))``; lists outermost first."""

    layout_ops: list[relax.Call]
    pools: list[relax.Call]
    activation: relax.Call | None
    chain: list[tuple[relax.Call, int]]  # each affine op and the index of the argument the chain goes through
    accumulator: relax.Var
    low: float
    reduce_axes: list[int]  # the axes along which every constant of the chain is the same


@relax.expr_functor.mutator
class _DynamicRequantizer(relax.PyExprMutator):
    def __init__(self, func: relax.Function):
        super().__init__()
        self._bound = BoundValues(func)
        self._matches: dict[relax.Var, _Match] = {}  # quantized layer input -> how it comes from an accumulator
        for block in func.body.blocks:
            for binding in block.bindings:
                data = self._dynamic_quantize_input(binding.value)
                match = None if data is None else self._match(data)
                if match is not None:
                    self._matches[data] = match
        self._pooled: dict[relax.Var, relax.Var] = {}  # quantized layer input -> its pooled accumulator

    def _dynamic_quantize_input(self, call: relax.Expr) -> relax.Var | None:
        """``x`` when ``call`` is DynamicQuantize's ``int8(clip(round(x * (127 / max(max(|x|, eps))))))``."""
        of = self._bound.of
        scaled = of(self._bound.rounded_to_int8(call), uses=None)
        if op_name(scaled) != "relax.multiply":
            return None
        data, inv = scaled.args
        inv = of(inv, uses=None)
        if op_name(inv) != "relax.divide" or _scalar(float32_constant(inv.args[0])) != QMAX:
            return None
        reduced = of(inv.args[1], uses=None)
        if op_name(reduced) != "relax.max" or reduced.attrs.axis is not None:
            return None
        floor = of(reduced.args[0], uses=None)
        if op_name(floor) != "relax.maximum" or not _scalar(float32_constant(floor.args[1])) > 0:
            return None
        magnitude = of(floor.args[0], uses=None)
        if op_name(magnitude) != "relax.abs" or not magnitude.args[0].same_as(data):
            return None
        return data

    def _match(self, data: relax.Var) -> _Match | None:
        """How the layer input ``data`` comes from an int32 accumulator; None when it does not, or when a value on
        the way has users besides the scale's reduction and the quantize."""
        of = self._unpacked_value
        value = of(data, uses=2)  # the reduction and the quantize
        layout_ops, pools = [], []
        while op_name(value) in _LAYOUT_OPS:
            layout_ops.append(value)
            value = of(value.args[0])
        while op_name(value) == _POOL:
            pools.append(value)
            value = of(value.args[0])
        activation, low = None, -float(QMAX)
        if op_name(value) == "relax.nn.relu" or (
            op_name(value) == "relax.clip" and number(value.args[1]) == 0 and (number(value.args[2]) or 0) > 0
        ):
            activation, low = value, 0.0
            value = of(value.args[0])
        chain = []
        while op_name(value) in _AFFINE_OPS and (index := self._chain_argument(value)) is not None:
            chain.append((value, index))
            value = of(value.args[index])
        if op_name(value) != "relax.astype" or str(value.attrs.dtype) != "float32":
            return None
        accumulator = value.args[0]
        if accumulator.ty.dtype != "int32" or (pools and not self._increasing(chain)):
            return None
        reduce_axes = _constant_axes(chain, accumulator.ty.ndim)
        if not reduce_axes:
            return None  # constants that vary along every axis: per-channel extremes would be the whole tensor
        return _Match(layout_ops, pools, activation, chain, accumulator, low, reduce_axes)

    def _unpacked_value(self, expr: relax.Expr, uses: int = 1) -> relax.Expr | None:
        """The value bound to ``expr`` (see ``BoundValues.of``), looking through ``(a, b, c)[0]`` to ``a``'s: a
        decomposed batch norm leaves its result in a tuple with the mean and variance."""
        value = self._bound.of(expr, uses)
        while isinstance(value, relax.TupleGetItem):
            packed = self._bound.of(value.tuple_value)
            if not isinstance(packed, relax.Tuple):
                return None
            value = self._bound.of(packed.fields[value.index])
        return value

    def _chain_argument(self, call: relax.Call) -> int | None:
        """Which argument of the affine op ``call`` carries the chain: the other is a float32 constant or a
        run-time scalar (a scale); None for ``c / x`` and for two tensors."""
        lhs, rhs = call.args
        if float32_constant(rhs) is not None or _is_scalar(rhs):
            return 0
        if float32_constant(lhs) is not None and op_name(call) != "relax.divide":
            return 1
        if _is_scalar(lhs) and op_name(call) == "relax.multiply":
            return 1
        return None

    def _increasing(self, chain: list[tuple[relax.Call, int]]) -> bool:
        """Whether every op of ``chain`` preserves order: multipliers and divisors positive, no ``c - x``."""
        for call, index in chain:
            other = call.args[1 - index]
            if op_name(call) == "relax.subtract" and index == 1:
                return False
            if op_name(call) in ("relax.multiply", "relax.divide"):
                constant = float32_constant(other)
                if constant is None and not self._is_dynamic_scale(other):
                    return False
                if constant is not None and not np.all(constant > 0):
                    return False
        return True

    def _is_dynamic_scale(self, expr: relax.Expr) -> bool:
        """Whether ``expr`` is DynamicQuantize's activation scale ``max(max(|x|, eps)) / 127``, positive."""
        scale = self._bound.of(expr, uses=None)
        if op_name(scale) != "relax.divide" or not _scalar(float32_constant(scale.args[1])) > 0:
            return False
        reduced = self._bound.of(scale.args[0], uses=None)
        if op_name(reduced) != "relax.max":
            return False
        floor = self._bound.of(reduced.args[0], uses=None)
        return op_name(floor) == "relax.maximum" and _scalar(float32_constant(floor.args[1])) > 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        if op_name(call) == "relax.abs" and (match := self._matches.get(call.args[0])) is not None:
            return self._extreme_magnitudes(call.args[0], match)
        data = self._dynamic_quantize_input(call)
        match = None if data is None else self._matches.get(data)
        if match is None:
            return super().visit_call_(call)
        inv = self._bound.of(self._bound.rounded_to_int8(call), uses=None).args[1]
        scaled = R.multiply(self._dequantized(self._accumulator(data, match), match), self.visit_expr(inv))
        result = R.astype(R.clip(R.round(scaled), R.prim_value(match.low), R.prim_value(float(QMAX))), "int8")
        for op in reversed(match.layout_ops):
            result = relax.Call(op.op, [result, *(self.visit_expr(a) for a in op.args[1:])], op.attrs)
        return result

    def _accumulator(self, data: relax.Var, match: _Match) -> relax.Expr:
        """The accumulator, max-pooled as ``data`` was (emitted once, shared by the reduction and the quantize)."""
        accumulator = self.visit_expr(match.accumulator)
        if not match.pools:
            return accumulator
        if data not in self._pooled:
            for pool in reversed(match.pools):
                accumulator = relax.Call(pool.op, [accumulator], pool.attrs)
            self._pooled[data] = self.builder_.emit(accumulator)
        return self._pooled[data]

    def _dequantized(self, accumulator: relax.Expr, match: _Match) -> relax.Expr:
        """``chain(astype(accumulator))``: the affine ops of ``match`` replayed on another int32 tensor."""
        value = R.astype(accumulator, "float32")
        for call, index in reversed(match.chain):
            args = [value if i == index else self.visit_expr(a) for i, a in enumerate(call.args)]
            value = relax.Call(call.op, args, call.attrs)
        return value

    def _extreme_magnitudes(self, data: relax.Var, match: _Match) -> relax.Expr:
        """``|activation(chain(a))|`` at each channel's largest (and smallest) accumulator ``a``: a tensor as small as
        the chain's constants whose maximum is ``max|data|`` (see the module docstring)."""
        accumulator = self._accumulator(data, match)
        reductions = [R.max] if match.activation is not None and self._increasing(match.chain) else [R.max, R.min]
        magnitudes = []
        for reduce in reductions:
            value = self._dequantized(reduce(accumulator, match.reduce_axes, keepdims=True), match)
            if match.activation is not None:
                act = match.activation
                value = relax.Call(act.op, [value, *(self.visit_expr(a) for a in act.args[1:])], act.attrs)
            magnitudes.append(R.abs(value))
        return magnitudes[0] if len(magnitudes) == 1 else R.maximum(*magnitudes)


def _constant_axes(chain: list[tuple[relax.Call, int]], ndim: int) -> list[int]:
    """The axes (of a rank-``ndim`` result) along which none of ``chain``'s constants varies."""
    shapes = [c.shape for call, index in chain if (c := float32_constant(call.args[1 - index])) is not None]
    shape = np.broadcast_shapes((), *shapes)
    shape = (1,) * (ndim - len(shape)) + tuple(shape)
    return [axis for axis, size in enumerate(shape) if size == 1]


def _is_scalar(expr: relax.Expr) -> bool:
    ty = expr.ty
    return isinstance(ty, relax.TensorType) and ty.dtype == "float32" and ty.ndim == 0


def _scalar(array: np.ndarray | None) -> float:
    """The number in a one-element array; NaN otherwise (it compares unequal and not greater than anything)."""
    return float(array.reshape(())) if array is not None and array.size == 1 else float("nan")
