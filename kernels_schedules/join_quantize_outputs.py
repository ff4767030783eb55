"""JoinQuantizeOutputs: a layer's output and the quantize of it for the next layer become one kernel.

In a residual network a layer's float output ``y`` feeds both the next (int8) layer, through an elementwise
quantize, and a residual add further on. FuseOps then has no single consumer to put in the layer's epilogue:
the conv writes ``y``, and a kernel of its own reads ``y`` back to write the int8 (the PP-OCR classifier's
``w8a8-static`` build has seven of them, about 1 us each, mostly the thread pool's launch). Between FuseOps and
FuseTIR this pass joins the two fused functions into one with both outputs, ``(y, q)``; the default schedules
compute the quantize in the conv's tile, right after the epilogue wrote it (``cpu_rules``).

Dynamic quantization reads ``y`` once more before that: ``max(maximum(|y|, eps))``, the next layer's run-time
scale, was a full-reduction kernel of its own reading the whole map back (BlazeFace's ``w8a8-dynamic`` has 18,
2-5 us each on its larger maps). Joined the same way, the default schedules reduce each tile of ``y`` in
registers as the epilogue writes it, one partial maximum per tile and lane, and the partials last.

Matched, in one dataflow block: a call of a fused function that holds a conv2d / matmul (a TIR function of
pattern ``kOutEWiseFusable``) and has one tensor result ``y`` with several users, and a later call of a fused
function that takes ``y`` and whose other arguments exist before the first call: either elementwise (every TIR
function in it of pattern ``kInjective`` or simpler) with a result of ``y``'s shape, or a reduction of ``y`` to one
value (of pattern ``kCommReduce`` or simpler), alone or with tensors of ``y``'s shape: a squeeze-excite gate ``s``'s
dynamic scale ``max(s * max|h|)`` joins the gate's kernel (``DynamicGatedInput``, ``join_channel_reductions``). The
joined call takes the first call's place.
"""

from __future__ import annotations

import tvm
from tvm import relax

from edgetvm.kernels_schedules.fused_calls import (
    COMM_REDUCE,
    INJECTIVE,
    CallJoiner,
    calls_layer,
    fused_callee,
    tir_patterns,
)
from edgetvm.pipeline.passes.bindings import static_shape


@tvm.transform.module_pass(opt_level=0, name="JoinQuantizeOutputs")
class JoinQuantizeOutputs:
    """Join each conv/matmul fused function with the elementwise function that quantizes its output for another
    user (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _Joiner(mod).run()


class _Joiner(CallJoiner):
    def rewrite_block(self, block: relax.DataflowBlock, uses: dict[relax.Var, int]) -> relax.DataflowBlock:
        bindings = list(block.bindings)
        pairs = self._pairs(bindings, uses)  # producer index -> consumer index
        if not pairs:
            return block
        return self.join_pairs(
            bindings,
            pairs,
            lambda layer, quantize: self.joined_call(layer, quantize, True, f"{layer.value.op.name_hint}_quantized"),
        )

    def _pairs(self, bindings: list[relax.Binding], uses: dict[relax.Var, int]) -> dict[int, int]:
        defined_at = {b.var: i for i, b in enumerate(bindings)}
        pairs: dict[int, int] = {}
        taken: set[int] = set()
        for i, binding in enumerate(bindings):
            if not self._is_layer(binding) or uses.get(binding.var, 0) < 2:
                continue
            for j in range(i + 1, len(bindings)):
                later = bindings[j]
                if j in taken or not self._quantizes(later, binding.var):
                    continue
                others = [a for a in later.value.args if not a.same_as(binding.var)]
                if all(not isinstance(a, relax.Var) or defined_at.get(a, -1) < i for a in others):
                    pairs[i] = j
                    taken.add(j)
                break  # only the first elementwise user is considered
        return pairs

    def _is_layer(self, binding: relax.Binding) -> bool:
        """A layer's call with one tensor result."""
        return isinstance(binding.var.ty, relax.TensorType) and calls_layer(self.mod, binding)

    def _quantizes(self, binding: relax.Binding, value: relax.Var) -> bool:
        """``binding`` quantizes ``value`` elementwise, or reduces ``value`` (alone, or with tensors of its shape) to
        its one-value scale."""
        func = fused_callee(self.mod, binding)
        if func is None or not any(a.same_as(value) for a in binding.value.args):
            return False
        shape = static_shape(binding.var)
        patterns = tir_patterns(self.mod, func)
        if shape is None or not patterns:
            return False
        if shape == static_shape(value):
            return max(patterns) <= INJECTIVE
        others = [a for a in binding.value.args if isinstance(a, relax.Var) and not a.same_as(value)]
        return (
            len(shape) == 0
            and max(patterns) == COMM_REDUCE
            and all(static_shape(a) == static_shape(value) for a in others)
        )
