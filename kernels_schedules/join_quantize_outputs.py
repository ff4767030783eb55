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
function in it of pattern ``kInjective`` or simpler) with a result of ``y``'s shape, or a reduction of ``y`` alone
to one value (of pattern ``kCommReduce`` or simpler). The joined call takes the first call's place.
"""

from __future__ import annotations

import tvm
from tvm import relax

from edgetvm.pipeline.passes.bindings import static_shape, use_counts

_OUT_ELEMWISE_FUSABLE = 4  # TVM's OpPatternKind: kElemWise 0, kBroadcast 1, kInjective 2, kCommReduce 3, ...
_INJECTIVE = 2
_COMM_REDUCE = 3


@tvm.transform.module_pass(opt_level=0, name="JoinQuantizeOutputs")
class JoinQuantizeOutputs:
    """Join each conv/matmul fused function with the elementwise function that quantizes its output for another
    user (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        builder = relax.BlockBuilder(mod)
        joiner = _Joiner(builder, mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function) and not _is_fused(func):
                rewritten = joiner.rewrite(func)
                if rewritten is not None:
                    builder.update_func(gvar, rewritten)
        return relax.transform.DeadCodeElimination()(relax.transform.Normalize()(builder.get()))


def _is_fused(func: relax.Function) -> bool:
    return func.attrs is not None and "Primitive" in func.attrs and bool(func.attrs["Primitive"])


class _Joiner:
    def __init__(self, builder: relax.BlockBuilder, mod: tvm.IRModule):
        self.builder = builder
        self.mod = mod
        self.joined: dict[tuple[str, str], tvm.ir.GlobalVar] = {}  # the same pair of functions is joined once

    def rewrite(self, func: relax.Function) -> relax.Function | None:
        if not isinstance(func.body, relax.SeqExpr):
            return None
        uses = use_counts(func)
        blocks = [self._rewrite_block(block, uses) for block in func.body.blocks]
        if all(new.same_as(old) for new, old in zip(blocks, func.body.blocks, strict=True)):
            return None
        return relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure, func.attrs)

    def _rewrite_block(self, block: relax.BindingBlock, uses: dict[relax.Var, int]) -> relax.BindingBlock:
        if not isinstance(block, relax.DataflowBlock):
            return block
        bindings = list(block.bindings)
        pairs = self._pairs(bindings, uses)  # producer index -> consumer index
        if not pairs:
            return block
        joined_consumers = set(pairs.values())
        out: list[relax.Binding] = []
        for index, binding in enumerate(bindings):
            if index in joined_consumers:
                continue
            if index not in pairs:
                out.append(binding)
                continue
            consumer = bindings[pairs[index]]
            call = self._joined_call(binding, consumer)
            joined = relax.DataflowVar("joined", relax.TupleType([binding.var.ty, consumer.var.ty]))
            out.append(relax.VarBinding(joined, call))
            out.append(relax.VarBinding(binding.var, relax.TupleGetItem(joined, 0)))
            out.append(relax.VarBinding(consumer.var, relax.TupleGetItem(joined, 1)))
        return relax.DataflowBlock(out)

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

    def _is_layer(self, binding: relax.Binding) -> bool:
        func = self._fused_callee(binding)
        ty = binding.var.ty if isinstance(binding, relax.VarBinding) else None
        return func is not None and isinstance(ty, relax.TensorType) and _OUT_ELEMWISE_FUSABLE in self._patterns(func)

    def _quantizes(self, binding: relax.Binding, value: relax.Var) -> bool:
        """``binding`` quantizes ``value`` elementwise, or reduces ``value`` alone to its one-value scale."""
        func = self._fused_callee(binding)
        if func is None or not any(a.same_as(value) for a in binding.value.args):
            return False
        shape = static_shape(binding.var)
        patterns = self._patterns(func)
        if shape is None or not patterns:
            return False
        if shape == static_shape(value):
            return max(patterns) <= _INJECTIVE
        inputs = [a for a in binding.value.args if isinstance(a, relax.Var)]
        return len(shape) == 0 and max(patterns) == _COMM_REDUCE and len(inputs) == 1

    def _joined_call(self, producer: relax.VarBinding, consumer: relax.VarBinding) -> relax.Call:
        producer_args = list(producer.value.args)
        extra = [a for a in consumer.value.args if not a.same_as(producer.var)]
        key = (producer.value.op.name_hint, consumer.value.op.name_hint)
        if key not in self.joined:
            func = join_functions(
                self.mod[producer.value.op], self.mod[consumer.value.op], list(consumer.value.args), producer.var
            )
            self.joined[key] = self.builder.add_func(func, f"{producer.value.op.name_hint}_quantized")
        return relax.Call(self.joined[key], producer_args + extra)


def join_functions(
    producer: relax.Function, consumer: relax.Function, consumer_args: list[relax.Expr], value: relax.Var
) -> relax.Function:
    """One fused function computing ``producer`` then ``consumer`` on its result, returning both results.

    Its parameters are the producer's, then the consumer's other than the one that receives ``value`` (the
    producer's result, as ``consumer_args`` says).
    """
    bound: dict[relax.Var, relax.Expr] = {}
    extra: list[relax.Var] = []
    for param, arg in zip(consumer.params, consumer_args, strict=True):
        if arg.same_as(value):
            bound[param] = producer.body.body
        else:
            extra.append(param)
    consumer = consumer.bind_params(bound)
    bindings = [b for block in producer.body.blocks for b in block.bindings]
    bindings += [b for block in consumer.body.blocks for b in block.bindings]
    result = relax.DataflowVar("joined", relax.TupleType([producer.ret_ty, consumer.ret_ty]))
    bindings.append(relax.VarBinding(result, relax.Tuple([producer.body.body, consumer.body.body])))
    out = relax.Var("joined_out", result.ty)
    bindings.append(relax.VarBinding(out, result))
    body = relax.SeqExpr([relax.DataflowBlock(bindings)], out)
    return relax.Function([*producer.params, *extra], body, result.ty, True, producer.attrs)
