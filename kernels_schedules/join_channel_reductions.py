"""JoinChannelReductions: reductions of one map to one value per channel become one kernel reading it once.

A squeeze-excite layer whose gated input is quantized dynamically reduces the same map twice per channel: the
squeeze's mean, and the dynamic scale's ``max|h|`` (``DynamicGatedInput``: ``max|h * g| = max_c g_c max|h_c|``).
Each was a kernel of its own reading the whole map (the PP-OCR classifier's ``w8a8-dynamic`` has eight such
pairs, 0.5-2 us a kernel on its 4608-38400-element maps, plus a launch each). Between FuseOps and FuseTIR this
pass puts the two in one fused function with both results; the default schedules (``cpu_rules``, rule
``channel-reduction``) compute both in one pass over the map, their accumulators side by side in registers.

Matched, in one dataflow block: calls that take one tensor ``h`` alone, reduce it (a TIR function of theirs has a
reduction block) and return one value per channel of it (every dimension 1 but the last, ``h``'s last). The first
two of them on the same ``h`` are joined; the joined call takes the first one's place (the second needs nothing
but ``h``, written before the first).
"""

from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx

from edgetvm.kernels_schedules.fused_calls import CallJoiner, fused_callee, fused_function, prim_funcs
from edgetvm.pipeline.passes.bindings import static_shape


@tvm.transform.module_pass(opt_level=0, name="JoinChannelReductions")
class JoinChannelReductions:
    """Join the per-channel reductions of one map (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _Joiner(mod).run()


class _Joiner(CallJoiner):
    def rewrite_block(self, block: relax.DataflowBlock, uses: dict[relax.Var, int]) -> relax.DataflowBlock:
        bindings = list(block.bindings)
        first: dict[relax.Var, int] = {}  # reduced map -> index of its first per-channel reduction
        pairs: dict[int, int] = {}
        for index, binding in enumerate(bindings):
            reduced = self._reduced_map(binding)
            if reduced is None:
                continue
            if reduced not in first:
                first[reduced] = index
            elif first[reduced] not in pairs:
                pairs[first[reduced]] = index
        if not pairs:
            return block
        return self.join_pairs(bindings, pairs, self._joined_call)

    def _reduced_map(self, binding: relax.Binding) -> relax.Var | None:
        """The map ``binding`` reduces to one value per channel, or None."""
        if not isinstance(binding, relax.VarBinding) or not isinstance(binding.value, relax.Call):
            return None
        prims = self._prim_funcs(binding)
        args = list(binding.value.args[1].fields) if self._is_call_tir(binding) else list(binding.value.args)
        if prims is None or len(args) != 1 or not isinstance(args[0], relax.Var):
            return None
        shape, reduced = static_shape(binding.var), static_shape(args[0])
        if shape is None or reduced is None or len(shape) != len(reduced) or len(shape) < 2:
            return None
        if shape[-1] != reduced[-1] or any(d != 1 for d in shape[:-1]) or all(d == 1 for d in reduced[:-1]):
            return None
        return args[0] if any(_has_reduction(p) for p in prims) else None

    @staticmethod
    def _is_call_tir(binding: relax.VarBinding) -> bool:
        return getattr(binding.value.op, "name", "") == "relax.call_tir"

    def _prim_funcs(self, binding: relax.VarBinding) -> list[tirx.PrimFunc] | None:
        """The TIR functions a call runs: its own (``call_tir``) or those of the fused function it calls."""
        if self._is_call_tir(binding):
            return [self.mod[binding.value.args[0]]]
        func = fused_callee(self.mod, binding)
        return None if func is None else prim_funcs(self.mod, func)

    def _joined_call(self, first: relax.VarBinding, second: relax.VarBinding) -> relax.Call:
        names = tuple(self._callee_name(b) for b in (first, second))
        if names not in self.joined:
            param = relax.Var("reduced", self._map_of(first).ty)
            bodies = [self._body_on(binding, param) for binding in (first, second)]
            bindings = [b for body, _ in bodies for b in body]
            attrs = tvm.ir.make_node("ir.DictAttrs", Primitive=True)
            func = fused_function([param], bindings, [value for _, value in bodies], attrs)
            self.joined[names] = self.builder.add_func(func, f"{names[0]}_{names[1]}")
        return relax.Call(self.joined[names], [self._map_of(first)])

    def _callee_name(self, binding: relax.VarBinding) -> str:
        return (binding.value.args[0] if self._is_call_tir(binding) else binding.value.op).name_hint

    def _map_of(self, binding: relax.VarBinding) -> relax.Var:
        return binding.value.args[1].fields[0] if self._is_call_tir(binding) else binding.value.args[0]

    def _body_on(self, binding: relax.VarBinding, param: relax.Var) -> tuple[list[relax.Binding], relax.Expr]:
        """The bindings computing ``binding``'s value from ``param`` in place of its map, and their result."""
        if self._is_call_tir(binding):
            call = binding.value
            value = relax.DataflowVar("reduced_out", binding.var.ty)
            new = relax.Call(call.op, [call.args[0], relax.Tuple([param])], call.attrs, call.ty_args)
            return [relax.VarBinding(value, new)], value
        func = self.mod[binding.value.op].bind_params({self.mod[binding.value.op].params[0]: param})
        return [b for block in func.body.blocks for b in block.bindings], func.body.body


def _has_reduction(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` has a block with a reduction iteration variable."""
    sch = s_tir.Schedule(func)
    blocks = [sch.get(block) for block in sch.get_child_blocks(sch.get_sblock("root"))]
    return any(int(iv.iter_type) == tirx.IterVar.CommReduce for block in blocks for iv in block.iter_vars)
