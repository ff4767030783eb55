"""QuantizeInConsumer: an int8 layer quantizes its own input, in its tile, instead of a kernel before it.

Dynamic quantization quantizes a layer's float input with a scale known only once the whole input is written
(``max|x| / 127``), so the quantize cannot join the producer's epilogue as the static scheme's does: it was a
kernel of its own between the producer and the int8 layer. Over the PP-OCR classifier's small maps (4608-9216
elements) it ran serially between two parallel kernels: it read the float map the two cores had written, and the
layer read back the int8 map one core had written, each time through the other core's cache (in a two-thread
run, its fourteen quantize kernels and the layers after them took 1-2 us each above their time alone).

Matched, in one dataflow block: a call of an elementwise fused function (every TIR function in it of pattern
``kInjective`` or simpler) whose int8 or uint8 result has one user, the call of a fused function holding a
conv2d / matmul (pattern ``kOutEWiseFusable``). The two become one fused function: the quantize, then the
layer on its result. The default schedules (``cpu_rules``) compute the quantize in the layer's tile, on the
input rows and columns that tile reads, right before its multiply-adds.
"""

from __future__ import annotations

import tvm
from tvm import relax

from edgetvm.kernels_schedules.fused_calls import INJECTIVE, CallJoiner, calls_layer, fused_callee, tir_patterns

_INT8 = ("int8", "uint8")


@tvm.transform.module_pass(opt_level=0, name="QuantizeInConsumer")
class QuantizeInConsumer:
    """Join each elementwise quantize with the int8 layer that is its only user (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _Joiner(mod).run()


class _Joiner(CallJoiner):
    def rewrite_block(self, block: relax.DataflowBlock, uses: dict[relax.Var, int]) -> relax.DataflowBlock:
        bindings = list(block.bindings)
        quantizes = {b.var: b for b in bindings if uses.get(b.var, 0) == 1 and self._is_quantize(b)}
        if not quantizes:
            return block
        out: list[relax.Binding] = []
        taken: set[relax.Var] = set()
        for binding in bindings:
            args = binding.value.args if calls_layer(self.mod, binding) else []
            inputs = [a for a in args if isinstance(a, relax.Var) and a in quantizes]
            if len(inputs) == 1:
                producer = quantizes[inputs[0]]
                name = f"{binding.value.op.name_hint}_quantizing"
                out.append(relax.VarBinding(binding.var, self.joined_call(producer, binding, False, name)))
                taken.add(producer.var)
            else:
                out.append(binding)
        if not taken:
            return block
        return relax.DataflowBlock([b for b in out if b.var not in taken])

    def _is_quantize(self, binding: relax.Binding) -> bool:
        func = fused_callee(self.mod, binding)
        ty = binding.var.ty
        if func is None or not isinstance(ty, relax.TensorType) or ty.dtype not in _INT8:
            return False
        patterns = tir_patterns(self.mod, func)
        return bool(patterns) and max(patterns) <= INJECTIVE
