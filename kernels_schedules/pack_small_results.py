"""PackSmallResults: ``main``'s small kernel results (run-time scales, squeeze-excite vectors) live in one tensor,
a slot each, that the kernels computing them write in place and the kernels using them read, instead of one
tensor each.

The Relax VM makes a tensor (a view of planned storage) for every kernel result every run, passes it, and frees it
after its last use: a chain of 40 tiny kernels ran 0.26 us a layer slower with a ``()`` result each than without,
0.14 us with those results as slots of one tensor written in place (Zen 4). A dynamic build has one such result
per quantized layer input (its ``max|x|``, a ``()`` tensor the kernel before computes beside its map: 19 in PP-OCR's
classifier); a squeeze-excite block has its channel means, its squeezed vector and its gates (and, dynamic, the
per-channel ``max|h|``), a few hundred values each.

The pass runs on ``main``'s dataflow block after the schedules. A small result is a float32 kernel result (a
``call_tir`` of a PrimFunc) of at most ``MAX_VALUES`` values that only kernel calls take as arguments. The kernel
parameters a result passes through (its producer's output, its consumers' inputs) share a slot; a kernel called at
several places (repeated blocks) then ties the results of those places to the same slot, which is safe when each
one's last use comes before the next one is written, and otherwise the results of that slot keep their own
tensors. A kernel that writes a slot takes the packed tensor as an in-place argument (``call_tir_inplace``); one
that only reads takes it as an input. Values are unchanged bit for bit: only where they are stored moves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax, tirx

from edgetvm.kernels_schedules.substitute_buffers import Element, substitute_buffers
from edgetvm.kernels_schedules.tir_nodes import UnsupportedNode
from edgetvm.pipeline.passes.bindings import static_type_shape

log = logging.getLogger(__name__)

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")
PACKED_NAME = "small_results"
MAX_VALUES = 1024  # 4 KB: a squeeze-excite vector of up to 1024 channels; maps are larger


def _shape(ty) -> tuple[int, ...] | None:
    """The dimensions of a small float32 tensor type, else None."""
    shape = static_type_shape(ty)
    if shape is None or str(ty.dtype) != "float32" or int(np.prod(shape, dtype=np.int64)) > MAX_VALUES:
        return None
    return shape


@dataclass
class _Call:
    """A kernel call in the block: ``index`` of its binding, the PrimFunc, its arguments and result types."""

    index: int
    binding: relax.VarBinding
    gvar: tvm.ir.GlobalVar
    args: list[relax.Expr]
    outs: list[relax.TensorType]


@dataclass
class _Small:
    """A small result of ``producer`` (result ``position``, of ``shape``); ``uses`` are (call index, argument
    position) pairs."""

    shape: tuple[int, ...]
    producer: _Call
    position: int
    uses: list[tuple[int, int]] = field(default_factory=list)
    eligible: bool = True


class _UnionFind:
    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        self.parent[self.find(a)] = self.find(b)


def _kernel_call(mod: tvm.IRModule, index: int, binding) -> _Call | None:
    value = binding.value
    if (
        not isinstance(binding, relax.VarBinding)
        or not isinstance(value, relax.Call)
        or not value.op.same_as(_CALL_TIR)
    ):
        return None
    if len(value.args) != 2 or not isinstance(value.args[1], relax.Tuple):  # no tir_vars
        return None
    gvar = value.args[0]
    if not isinstance(mod[gvar], tirx.PrimFunc):
        return None
    out = value.ty_args[0]
    outs = list(out.fields) if isinstance(out, relax.TupleType) else [out]
    return _Call(index, binding, gvar, list(value.args[1].fields), outs)


@dataclass
class _Plan:
    slots: dict[tuple[str, int], int]  # (PrimFunc name, parameter position) -> offset of its slot
    count: int  # values of the packed tensor


def _plan(mod: tvm.IRModule, block: relax.DataflowBlock, result: relax.Expr) -> tuple[_Plan, dict] | None:
    calls: dict[int, _Call] = {}
    smalls: dict[relax.Var, _Small] = {}
    tuple_of: dict[relax.Var, _Call] = {}
    for index, binding in enumerate(block.bindings):
        call = _kernel_call(mod, index, binding)
        if call is not None:
            calls[index] = call
            if len(call.outs) == 1 and _shape(call.outs[0]) is not None:
                smalls[binding.var] = _Small(_shape(call.outs[0]), call, 0)
            elif len(call.outs) > 1:
                tuple_of[binding.var] = call
            continue
        value = binding.value
        if isinstance(value, relax.TupleGetItem) and value.tuple_value in tuple_of:
            call = tuple_of[value.tuple_value]
            shape = _shape(call.outs[value.index])
            if shape is not None:
                smalls[binding.var] = _Small(shape, call, value.index)

    # Where each small result is used: only as a kernel call's argument counts; anything else keeps it a tensor,
    # and so does a result tuple used whole (not by item) keep all its results.
    whole_tuples: set[relax.Var] = set()
    for index, binding in enumerate(block.bindings):
        value = binding.value
        call = calls.get(index)
        if isinstance(value, relax.TupleGetItem) and value.tuple_value in tuple_of:
            continue
        for var in relax.analysis.free_vars(value):
            if var in tuple_of:
                whole_tuples.add(var)
            small = smalls.get(var)
            if small is None:
                continue
            positions = [i for i, arg in enumerate(call.args) if arg.same_as(var)] if call else []
            if call is None or len(positions) == 0:
                small.eligible = False
            small.uses += [(index, p) for p in positions]
    for var in relax.analysis.free_vars(result):
        if var in smalls:
            smalls[var].eligible = False
        whole_tuples.update([var] if var in tuple_of else [])
    for small in smalls.values():
        if small.producer.binding.var in whole_tuples:
            small.eligible = False

    # Kernel parameters a result passes through share a slot.
    classes = _UnionFind()
    poisoned: set = set()

    def node(call: _Call, position: int) -> tuple[str, int]:
        return (call.gvar.name_hint, position)

    for small in smalls.values():
        out = node(small.producer, len(small.producer.args) + small.position)
        classes.find(out)
        for index, position in small.uses:
            classes.union(node(calls[index], position), out)
        if not small.eligible:
            poisoned.add(out)
            poisoned.update(node(calls[index], position) for index, position in small.uses)
    # A parameter in a class at one call must get a result of that class at every call of its kernel.
    for call in calls.values():
        for position, arg in enumerate(call.args):
            key = node(call, position)
            if key in classes.parent and arg not in smalls:
                poisoned.add(key)
    roots_poisoned = {classes.find(key) for key in poisoned}

    # Results of one slot have one shape and are never alive together: each is written after the last use of the
    # one before.
    members: dict = {}
    for small in smalls.values():
        root = classes.find(node(small.producer, len(small.producer.args) + small.position))
        members.setdefault(root, []).append(small)
    for root, group in members.items():
        group.sort(key=lambda s: s.producer.index)
        if len({s.shape for s in group}) > 1:
            roots_poisoned.add(root)
        for before, after in zip(group, group[1:], strict=False):
            last_use = max((index for index, _ in before.uses), default=before.producer.index)
            if last_use >= after.producer.index:
                roots_poisoned.add(root)
    live = [root for root in members if root not in roots_poisoned]
    live.sort(key=lambda root: min(s.producer.index for s in members[root]))
    offsets, count = {}, 0
    for root in live:
        offsets[root] = count
        count += int(np.prod(members[root][0].shape, dtype=np.int64))
    slots = {key: offsets[classes.find(key)] for key in classes.parent if classes.find(key) in offsets}
    if sum(len(members[root]) for root in live) < 2:
        return None
    return _Plan(slots, count), calls


def _rewrite_kernel(func: tirx.PrimFunc, inputs: int, slots: dict[int, int], count: int) -> tirx.PrimFunc:
    """``func`` taking the packed tensor after its kept inputs, in place of its small parameters (``slots``:
    parameter position -> offset of its slot)."""
    packed = tirx.decl_buffer((count,), "float32", PACKED_NAME)
    params = list(func.params)
    mapping = {params[p]: Element(packed, offset, params[p].ty.shape) for p, offset in slots.items()}
    kept_in = [params[p] for p in range(inputs) if p not in slots]
    kept_out = [params[p] for p in range(inputs, len(params)) if p not in slots]
    return substitute_buffers(func, [*kept_in, packed, *kept_out], mapping)


def pack_small_results(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with ``main``'s small results packed (see the module docstring); unchanged when it has fewer than two
    to pack, more than one dataflow block, or a kernel the substitution cannot rebuild."""
    if "main" not in [g.name_hint for g in mod.get_global_vars()]:
        return mod
    main = mod["main"]
    if not isinstance(main.body, relax.SeqExpr):
        return mod
    blocks = [b for b in main.body.blocks if isinstance(b, relax.DataflowBlock)]
    if len(blocks) != 1:
        return mod
    block = blocks[0]
    planned = _plan(mod, block, main.body.body)
    if planned is None:
        return mod
    plan, calls = planned

    # Each kernel's parameters in a slot; kernels whose slots are written are called in place.
    kernels: dict[str, dict[int, int]] = {}
    for (name, position), slot in plan.slots.items():
        kernels.setdefault(name, {})[position] = slot
    rewritten: dict[str, tirx.PrimFunc] = {}
    try:
        for call in calls.values():
            name = call.gvar.name_hint
            if name in kernels and name not in rewritten:
                rewritten[name] = _rewrite_kernel(mod[call.gvar], len(call.args), kernels[name], plan.count)
    except UnsupportedNode as err:
        log.debug("small results left unpacked: a kernel holds %s", err)
        return mod
    # New global variables: a GlobalVar keeps the type of the function it was made for.
    functions = {gvar: func for gvar, func in mod.functions_items() if gvar.name_hint not in rewritten}
    builder = relax.BlockBuilder(tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos))
    gvars = {name: builder.add_func(func, name) for name, func in rewritten.items()}

    packed_ty = relax.TensorType([plan.count], "float32")
    current = relax.DataflowVar(PACKED_NAME, packed_ty)
    bindings = [relax.VarBinding(current, relax.op.builtin.alloc_tensor(relax.ShapeExpr([plan.count]), "float32", 0))]
    new_tuples: dict[relax.Var, tuple[relax.Var, dict[int, int]]] = {}  # old tuple var -> (new var, old -> new item)
    for index, binding in enumerate(block.bindings):
        call = calls.get(index)
        value = binding.value
        if call is not None and call.gvar.name_hint in kernels:
            slots = kernels[call.gvar.name_hint]
            gvar = gvars[call.gvar.name_hint]
            inputs = len(call.args)
            args = [a for p, a in enumerate(call.args) if p not in slots] + [current]
            kept_outs = [j for j in range(len(call.outs)) if inputs + j not in slots]
            writes = len(kept_outs) < len(call.outs)
            if not writes:
                bindings.append(
                    relax.VarBinding(
                        binding.var,
                        relax.call_tir(gvar, relax.Tuple(args), call.outs if len(call.outs) > 1 else call.outs[0]),
                    )
                )
                continue
            outs = [call.outs[j] for j in kept_outs] + [packed_ty]
            inplace = [-1] * len(kept_outs) + [len(args) - 1]
            if len(outs) == 1:
                current = relax.DataflowVar(PACKED_NAME, packed_ty)
                bindings.append(
                    relax.VarBinding(current, relax.call_tir_inplace(gvar, relax.Tuple(args), inplace, outs[0]))
                )
                continue
            var_type = type(binding.var)
            result = var_type(binding.var.name, relax.TupleType(outs))
            bindings.append(relax.VarBinding(result, relax.call_tir_inplace(gvar, relax.Tuple(args), inplace, outs)))
            current = relax.DataflowVar(PACKED_NAME, packed_ty)
            bindings.append(relax.VarBinding(current, relax.TupleGetItem(result, len(outs) - 1)))
            new_tuples[binding.var] = (result, {old: new for new, old in enumerate(kept_outs)})
            continue
        if isinstance(value, relax.TupleGetItem) and value.tuple_value in new_tuples:
            result, items = new_tuples[value.tuple_value]
            if value.index in items:
                bindings.append(relax.VarBinding(binding.var, relax.TupleGetItem(result, items[value.index])))
            continue  # a packed result: its readers take the packed tensor
        bindings.append(binding)

    body = relax.SeqExpr(
        [relax.DataflowBlock(bindings) if b.same_as(block) else b for b in main.body.blocks], main.body.body
    )
    builder.update_func(
        mod.get_global_var("main"), relax.Function(main.params, body, main.ret_ty, main.is_pure, main.attrs)
    )
    log.debug("packed small results in %d values", plan.count)
    return relax.transform.Normalize()(builder.get())


@tvm.transform.module_pass(opt_level=0, name="PackSmallResults")
class PackSmallResults:
    """``main``'s small kernel results as slots of one tensor (``pack_small_results``)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return pack_small_results(mod)
