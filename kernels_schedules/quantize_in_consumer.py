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

from edgetvm.pipeline.passes.bindings import use_counts

_OUT_ELEMWISE_FUSABLE = 4  # TVM's OpPatternKind: kElemWise 0, kBroadcast 1, kInjective 2, kCommReduce 3, ...
_INJECTIVE = 2
_INT8 = ("int8", "uint8")


@tvm.transform.module_pass(opt_level=0, name="QuantizeInConsumer")
class QuantizeInConsumer:
    """Join each elementwise quantize with the int8 layer that is its only user (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        builder = relax.BlockBuilder(mod)
        joiner = _Joiner(builder, mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function) and not _is_fused(func) and isinstance(func.body, relax.SeqExpr):
                uses = use_counts(func)
                blocks = [joiner.rewrite_block(block, uses) for block in func.body.blocks]
                if not all(new.same_as(old) for new, old in zip(blocks, func.body.blocks, strict=True)):
                    body = relax.SeqExpr(blocks, func.body.body)
                    builder.update_func(gvar, relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs))
        return relax.transform.DeadCodeElimination()(relax.transform.Normalize()(builder.get()))


def _is_fused(func: relax.Function) -> bool:
    return func.attrs is not None and "Primitive" in func.attrs and bool(func.attrs["Primitive"])


class _Joiner:
    def __init__(self, builder: relax.BlockBuilder, mod: tvm.IRModule):
        self.builder = builder
        self.mod = mod
        self.joined: dict[tuple[str, str], tvm.ir.GlobalVar] = {}  # the same pair of functions is joined once

    def rewrite_block(self, block: relax.BindingBlock, uses: dict[relax.Var, int]) -> relax.BindingBlock:
        if not isinstance(block, relax.DataflowBlock):
            return block
        bindings = list(block.bindings)
        quantizes = {b.var: b for b in bindings if uses.get(b.var, 0) == 1 and self._is_quantize(b)}
        if not quantizes:
            return block
        out: list[relax.Binding] = []
        taken: set[relax.Var] = set()
        for binding in bindings:
            inputs = [a for a in self._args(binding) if isinstance(a, relax.Var) and a in quantizes]
            if len(inputs) == 1 and self._is_layer(binding):
                producer = quantizes[inputs[0]]
                out.append(relax.VarBinding(binding.var, self._joined_call(producer, binding)))
                taken.add(producer.var)
            else:
                out.append(binding)
        if not taken:
            return block
        return relax.DataflowBlock([b for b in out if b.var not in taken])

    def _args(self, binding: relax.Binding) -> list[relax.Expr]:
        return list(binding.value.args) if self._fused_callee(binding) is not None else []

    def _fused_callee(self, binding: relax.Binding) -> relax.Function | None:
        if not isinstance(binding, relax.VarBinding) or not isinstance(binding.value, relax.Call):
            return None
        op = binding.value.op
        if not isinstance(op, tvm.ir.GlobalVar) or op not in self.mod.get_global_vars():
            return None
        func = self.mod[op]
        return func if isinstance(func, relax.Function) and _is_fused(func) else None

    def _patterns(self, func: relax.Function) -> list[int]:
        patterns = []
        for block in func.body.blocks:
            for binding in block.bindings:
                value = binding.value
                if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.call_tir":
                    prim = self.mod[value.args[0]]
                    pattern = prim.attrs.get("op_pattern") if prim.attrs is not None else None
                    patterns.append(int(pattern) if pattern is not None else _OUT_ELEMWISE_FUSABLE + 1)
        return patterns

    def _is_quantize(self, binding: relax.Binding) -> bool:
        func = self._fused_callee(binding)
        ty = binding.var.ty
        if func is None or not isinstance(ty, relax.TensorType) or ty.dtype not in _INT8:
            return False
        patterns = self._patterns(func)
        return bool(patterns) and max(patterns) <= _INJECTIVE

    def _is_layer(self, binding: relax.Binding) -> bool:
        func = self._fused_callee(binding)
        return func is not None and _OUT_ELEMWISE_FUSABLE in self._patterns(func)

    def _joined_call(self, producer: relax.VarBinding, consumer: relax.VarBinding) -> relax.Call:
        key = (producer.value.op.name_hint, consumer.value.op.name_hint)
        if key not in self.joined:
            func = quantize_then_layer(
                self.mod[producer.value.op], self.mod[consumer.value.op], list(consumer.value.args), producer.var
            )
            self.joined[key] = self.builder.add_func(func, f"{consumer.value.op.name_hint}_quantizing")
        extra = [a for a in consumer.value.args if not a.same_as(producer.var)]
        return relax.Call(self.joined[key], list(producer.value.args) + extra)


def quantize_then_layer(
    quantize: relax.Function, layer: relax.Function, layer_args: list[relax.Expr], value: relax.Var
) -> relax.Function:
    """One fused function computing ``quantize`` then ``layer`` on its result, returning the layer's result.

    Its parameters are the quantize's, then the layer's other than the one that receives ``value`` (the
    quantize's result, as ``layer_args`` says).
    """
    bound: dict[relax.Var, relax.Expr] = {}
    extra: list[relax.Var] = []
    for param, arg in zip(layer.params, layer_args, strict=True):
        if arg.same_as(value):
            bound[param] = quantize.body.body
        else:
            extra.append(param)
    layer = layer.bind_params(bound)
    bindings = [b for block in quantize.body.blocks for b in block.bindings]
    bindings += [b for block in layer.body.blocks for b in block.bindings]
    out = relax.Var("quantized_layer_out", layer.ret_ty)
    bindings.append(relax.VarBinding(out, layer.body.body))
    body = relax.SeqExpr([relax.DataflowBlock(bindings)], out)
    return relax.Function([*quantize.params, *extra], body, layer.ret_ty, True, layer.attrs)
