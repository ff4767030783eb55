"""SplitBroadcastQuantize: a map's quantize that FuseOps put in a one-pixel layer's kernel becomes a kernel of its own.

A squeeze-excite block gates a map per channel, ``h * s``, with ``s`` the output of a 1x1 conv on one pixel (the
excitation). In the static scheme the next layer's input is ``quantize(h * s)``: elementwise after the conv, so
FuseOps fuses it into the conv's kernel, which then computes 88-200 gates and quantizes the whole map (25-60
thousand values), writing it as int8 for the next layer to read back. In the dynamic scheme the same quantize waits
for a run-time scale and is its own kernel, which ``QuantizeInConsumer`` moves into the next layer's tile; the
dynamic build's gated blocks ran faster than the static ones for that (PP-OCR's first gated block: gate kernel
0.28 us and layer 3.65 us, against 2.41 us and 2.40 us).

Matched, in one dataflow block: the call of a fused function that starts with a ``kOutEWiseFusable`` TIR function
(the conv), whose int8 / uint8 result has one user, an int8 layer's fused call, and is at least ``MIN_SPREAD``
times larger than the conv's output; the bindings after the conv split where the values stop being the conv
output's size. The first part (the conv and its per-channel epilogue) keeps the call's place and returns the one
per-channel value the second part reads; the second part (broadcast and elementwise only) becomes a fused function
of its own, for ``QuantizeInConsumer`` to join to the layer.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax

from edgetvm.kernels_schedules.fused_calls import (
    INJECTIVE,
    OUT_ELEMWISE_FUSABLE,
    CallJoiner,
    calls_layer,
    fused_callee,
    fused_function,
    tir_patterns,
)
from edgetvm.pipeline.passes.bindings import static_shape

_INT8 = ("int8", "uint8")
# The quantized map against the conv's output: a gate applied to every pixel of a map, not a layer's epilogue.
MIN_SPREAD = 16


@tvm.transform.module_pass(opt_level=0, name="SplitBroadcastQuantize")
class SplitBroadcastQuantize:
    """Split each one-pixel layer's kernel that also quantizes a map (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _Splitter(mod).run()


class _Splitter(CallJoiner):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        # callee name -> (gate function, its result type, map function, the arguments each takes), or None
        self.split: dict[str, tuple | None] = {}

    def rewrite_block(self, block: relax.DataflowBlock, uses: dict[relax.Var, int]) -> relax.DataflowBlock:
        bindings = list(block.bindings)
        layer_inputs = {
            arg for b in bindings if calls_layer(self.mod, b) for arg in b.value.args if isinstance(arg, relax.Var)
        }
        out: list[relax.Binding] = []
        for binding in bindings:
            parts = None
            if binding.var in layer_inputs and uses.get(binding.var, 0) == 1:
                parts = self._parts(binding)
            if parts is None:
                out.append(binding)
                continue
            first, gate_ty, second, first_args, second_args = parts
            args = list(binding.value.args)
            gate = relax.DataflowVar("gate", gate_ty)
            out.append(relax.VarBinding(gate, relax.Call(first, [args[i] for i in first_args])))
            out.append(relax.VarBinding(binding.var, relax.Call(second, [*(args[i] for i in second_args), gate])))
        return relax.DataflowBlock(out) if len(out) > len(bindings) else block

    def _parts(self, binding: relax.VarBinding):
        """The two functions ``binding``'s callee splits into, each added once, and which of the call's arguments
        each takes (the second also takes the first one's result, last); None when it does not split."""
        func = fused_callee(self.mod, binding)
        if func is None:
            return None
        name = binding.value.op.name_hint
        if name not in self.split:
            self.split[name] = self._split(func, binding.var.ty, name)
        return self.split[name]

    def _split(self, func: relax.Function, result_ty: relax.Type, name: str):
        """``func`` cut after its conv's per-channel values (see the module docstring), its two parts added to the
        module as ``name_gate`` and ``name_map``; None when it is not a one-pixel conv quantizing a larger map."""
        if not isinstance(result_ty, relax.TensorType) or result_ty.dtype not in _INT8:
            return None
        patterns = tir_patterns(self.mod, func)
        if len(patterns) < 2 or patterns[0] != OUT_ELEMWISE_FUSABLE or max(patterns[1:]) > INJECTIVE:
            return None
        bindings = [b for block in func.body.blocks for b in block.bindings]
        anchor = _elements(bindings[0].var)
        if anchor is None or (_elements(func.body.body) or 0) < MIN_SPREAD * anchor:
            return None
        cut = next((i for i, b in enumerate(bindings) if _elements(b.var) != anchor), len(bindings))
        head, tail = bindings[:cut], bindings[cut:]
        if not tail:
            return None
        head_reads, tail_reads = _reads(head), _reads(tail)
        crossing = [b.var for b in head if b.var in tail_reads]
        if len(crossing) != 1:
            return None
        gate = crossing[0]
        first_params = [p for p in func.params if p in head_reads]
        second_params = [p for p in func.params if p in tail_reads]
        first = fused_function(first_params, head, [gate], func.attrs)
        gate_param = relax.Var("gate", gate.ty)
        second = fused_function(
            [*second_params, gate_param], [relax.VarBinding(gate, gate_param), *tail], [func.body.body], func.attrs
        )
        first_var = self.builder.add_func(first, f"{name}_gate")
        second_var = self.builder.add_func(second, f"{name}_map")
        index = {p: i for i, p in enumerate(func.params)}
        return first_var, gate.ty, second_var, [index[p] for p in first_params], [index[p] for p in second_params]


def _elements(expr: relax.Expr) -> int | None:
    """How many values the tensor ``expr`` holds; None for anything else."""
    shape = static_shape(expr)
    return None if shape is None else math.prod(shape)


def _reads(bindings: list[relax.Binding]) -> set[relax.Var]:
    """The variables ``bindings`` read."""
    found: set[relax.Var] = set()

    def visit(expr):
        if isinstance(expr, relax.Var):
            found.add(expr)

    for binding in bindings:
        relax.analysis.post_order_visit(binding.value, visit)
    return found
