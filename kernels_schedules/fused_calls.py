"""What the passes between FuseOps and FuseTIR read of a module: the calls of fused functions and their kinds.

After FuseOps, ``main`` calls fused Relax functions (``Primitive``), each a sequence of ``call_tir`` of legalized
TIR functions whose ``op_pattern`` attribute says what they do (TVM's ``OpPatternKind``). The joining passes
(``join_quantize_outputs``, ``quantize_in_consumer``) decide from these which two calls may become one kernel,
and join them with ``CallJoiner`` and ``join_functions``.
"""

from __future__ import annotations

import tvm
from tvm import relax

from edgetvm.pipeline.passes.bindings import use_counts

# TVM's OpPatternKind: kElemWise 0, kBroadcast 1, kInjective 2, kCommReduce 3, kOutEWiseFusable 4 (conv2d,
# matmul), kTuple 7, kOpaque 8.
INJECTIVE = 2
COMM_REDUCE = 3
OUT_ELEMWISE_FUSABLE = 4


def is_fused(func: relax.Function) -> bool:
    """Whether ``func`` is a fused function FuseOps made (attribute ``Primitive``)."""
    return func.attrs is not None and "Primitive" in func.attrs and bool(func.attrs["Primitive"])


def fused_callee(mod: tvm.IRModule, binding: relax.Binding) -> relax.Function | None:
    """The fused function ``binding`` calls, or None when it binds anything else."""
    if not isinstance(binding, relax.VarBinding) or not isinstance(binding.value, relax.Call):
        return None
    op = binding.value.op
    if not isinstance(op, tvm.ir.GlobalVar) or op not in mod.get_global_vars():
        return None
    func = mod[op]
    return func if isinstance(func, relax.Function) and is_fused(func) else None


def calls_layer(mod: tvm.IRModule, binding: relax.Binding) -> bool:
    """Whether ``binding`` calls a fused function holding a conv2d / matmul (a TIR function of pattern
    ``kOutEWiseFusable``)."""
    func = fused_callee(mod, binding)
    return func is not None and OUT_ELEMWISE_FUSABLE in tir_patterns(mod, func)


def prim_funcs(mod: tvm.IRModule, func: relax.Function) -> list[tvm.tirx.PrimFunc]:
    """The TIR functions a fused function calls (``call_tir``), in order."""
    called = []
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.call_tir":
                called.append(mod[value.args[0]])
    return called


def tir_patterns(mod: tvm.IRModule, func: relax.Function) -> list[int]:
    """The ``op_pattern`` of each TIR function a fused function calls (one past kOutEWiseFusable when unset)."""
    patterns = []
    for prim in prim_funcs(mod, func):
        pattern = prim.attrs.get("op_pattern") if prim.attrs is not None else None
        patterns.append(int(pattern) if pattern is not None else OUT_ELEMWISE_FUSABLE + 1)
    return patterns


def kernel_calls(mod: tvm.IRModule) -> dict[str, relax.Type]:
    """The kernels (``call_tir`` of a TIR function) ``main`` calls, each with the type of what it returns."""
    calls = {}
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.call_tir":
                calls[value.args[0].name_hint] = binding.var.ty
    return calls


def join_functions(
    producer: relax.Function,
    consumer: relax.Function,
    consumer_args: list[relax.Expr],
    value: relax.Var,
    keep_producer_result: bool = True,
) -> relax.Function:
    """One fused function computing ``producer`` then ``consumer`` on its result, returning both results (or,
    without ``keep_producer_result``, the consumer's alone).

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
    results = [producer.body.body, consumer.body.body] if keep_producer_result else [consumer.body.body]
    return fused_function([*producer.params, *extra], bindings, results, producer.attrs)


def fused_function(params: list[relax.Var], bindings: list[relax.Binding], results: list[relax.Expr], attrs):
    """A fused function of ``params`` running ``bindings`` (one dataflow block) and returning ``results``: the one,
    or a tuple of several."""
    bindings = list(bindings)
    if len(results) > 1:
        result = relax.DataflowVar("joined", relax.TupleType([r.ty for r in results]))
        bindings.append(relax.VarBinding(result, relax.Tuple(results)))
    else:
        result = results[0]
    out = relax.Var("joined_out", result.ty)
    bindings.append(relax.VarBinding(out, result))
    return relax.Function(params, relax.SeqExpr([relax.DataflowBlock(bindings)], out), out.ty, True, attrs)


class CallJoiner:
    """What a joining pass shares: ``rewrite_block`` (the pass's own) is given each dataflow block of the module's
    non-fused functions, with the use counts of their variables; ``joined_call`` makes the call of two joined
    fused functions, each pair of functions joined once and added to the module as ``name``."""

    def __init__(self, mod: tvm.IRModule):
        self.mod = mod
        self.builder = relax.BlockBuilder(mod)
        self.joined: dict[tuple[str, str], tvm.ir.GlobalVar] = {}

    def run(self) -> tvm.IRModule:
        for gvar, func in self.mod.functions_items():
            if not isinstance(func, relax.Function) or is_fused(func) or not isinstance(func.body, relax.SeqExpr):
                continue
            uses = use_counts(func)
            old = func.body.blocks
            blocks = [self.rewrite_block(b, uses) if isinstance(b, relax.DataflowBlock) else b for b in old]
            if not all(new.same_as(block) for new, block in zip(blocks, old, strict=True)):
                body = relax.SeqExpr(blocks, func.body.body)
                self.builder.update_func(gvar, relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs))
        return relax.transform.DeadCodeElimination()(relax.transform.Normalize()(self.builder.get()))

    def rewrite_block(self, block: relax.DataflowBlock, uses: dict[relax.Var, int]) -> relax.DataflowBlock:
        raise NotImplementedError

    @staticmethod
    def join_pairs(bindings: list[relax.Binding], pairs: dict[int, int], call_of) -> relax.DataflowBlock:
        """The block of ``bindings`` where each pair (index of the first binding -> index of the second, later)
        became one call, ``call_of(first, second)``, returning both results, in the first one's place; both
        variables are bound to its items there."""
        seconds = set(pairs.values())
        out: list[relax.Binding] = []
        for index, binding in enumerate(bindings):
            if index in seconds:
                continue
            if index not in pairs:
                out.append(binding)
                continue
            second = bindings[pairs[index]]
            joined = relax.DataflowVar("joined", relax.TupleType([binding.var.ty, second.var.ty]))
            out.append(relax.VarBinding(joined, call_of(binding, second)))
            out.append(relax.VarBinding(binding.var, relax.TupleGetItem(joined, 0)))
            out.append(relax.VarBinding(second.var, relax.TupleGetItem(joined, 1)))
        return relax.DataflowBlock(out)

    def joined_call(
        self, producer: relax.VarBinding, consumer: relax.VarBinding, keep_producer_result: bool, name: str
    ) -> relax.Call:
        """The call of ``producer``'s and ``consumer``'s fused functions joined (``join_functions``), where
        ``consumer`` takes ``producer``'s result: ``producer``'s arguments, then ``consumer``'s others."""
        key = (producer.value.op.name_hint, consumer.value.op.name_hint)
        if key not in self.joined:
            func = join_functions(
                self.mod[producer.value.op],
                self.mod[consumer.value.op],
                list(consumer.value.args),
                producer.var,
                keep_producer_result,
            )
            self.joined[key] = self.builder.add_func(func, name)
        extra = [a for a in consumer.value.args if not a.same_as(producer.var)]
        return relax.Call(self.joined[key], list(producer.value.args) + extra)
