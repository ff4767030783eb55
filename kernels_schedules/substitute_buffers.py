"""Replacing buffers of a scheduled PrimFunc by elements of another: every load, store and block region of an old
buffer is rewritten to the new buffer at fixed indices. TVM 0.27 has no Python statement mutator for TIR (and
``tirx.Specialize`` binds symbolic buffer fields only), so the node kinds that scheduled kernels hold are rebuilt
here one by one; any other kind raises ``UnsupportedNode``, so that a caller never gets a function that still
refers to a buffer it removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.ir import expr as ir_expr
from tvm.ir.prim import expr as prim

from edgetvm.kernels_schedules.tir_nodes import loop_with


class UnsupportedNode(Exception):
    """A node kind the substitution does not rebuild."""


@dataclass(frozen=True)
class Element:
    """Where an old buffer's accesses go: ``buffer[indices + old indices]``."""

    buffer: tvm.ir.expr.Var
    indices: tuple


_LEAVES = (prim.IntImm, prim.FloatImm, ir_expr.StringImm, ir_expr.Var)
_BINARY = (prim.BinaryOpExpr, prim.CmpExpr, prim.And, prim.Or)


def _same(new, old) -> bool:
    return len(new) == len(old) and all(a.same_as(b) for a, b in zip(new, old, strict=True))


class BufferSubstitution:
    """Rewrites statements and expressions with ``mapping`` (old buffer -> ``Element``)."""

    def __init__(self, mapping: dict[tvm.ir.expr.Var, Element]):
        self.mapping = mapping

    def _target(self, buffer, indices):
        element = self.mapping.get(buffer)
        if element is None:
            return buffer, indices
        return element.buffer, [*element.indices, *indices]

    def expr(self, e):
        if isinstance(e, _LEAVES):
            return e
        if isinstance(e, ir_expr.TensorLoad):
            indices = [self.expr(i) for i in e.indices]
            if e.source not in self.mapping and _same(indices, list(e.indices)):
                return e
            return tirx.BufferLoad(*self._target(e.source, indices))
        if isinstance(e, _BINARY):
            a, b = self.expr(e.a), self.expr(e.b)
            return e if a.same_as(e.a) and b.same_as(e.b) else type(e)(a, b)
        if isinstance(e, prim.Not):
            a = self.expr(e.a)
            return e if a.same_as(e.a) else prim.Not(a)
        if isinstance(e, prim.Cast):
            value = self.expr(e.value)
            return e if value.same_as(e.value) else tirx.Cast(str(e.ty.dtype), value)
        if isinstance(e, prim.Select):
            old = [e.condition, e.true_value, e.false_value]
            parts = [self.expr(x) for x in old]
            return e if _same(parts, old) else tirx.Select(*parts)
        if isinstance(e, prim.Ramp):
            old = [e.base, e.stride]
            parts = [self.expr(x) for x in old]
            return e if _same(parts, old) else prim.Ramp(*parts, e.lanes)
        if isinstance(e, prim.Broadcast):
            value = self.expr(e.value)
            return e if value.same_as(e.value) else prim.Broadcast(value, e.lanes)
        if isinstance(e, prim.Let):
            value, body = self.expr(e.value), self.expr(e.body)
            return e if value.same_as(e.value) and body.same_as(e.body) else prim.Let(e.var, value, body)
        if isinstance(e, ir_expr.Call) and isinstance(e.op, tvm.ir.Op):
            args = [self.expr(x) for x in e.args]
            if _same(args, list(e.args)):
                return e
            return ir_expr.Call(e.op, args, e.attrs, e.ty_args, e.span, ret_ty=e.ty)
        raise UnsupportedNode(type(e).__name__)

    def region(self, r):
        element = self.mapping.get(r.source)
        if element is None:
            return r
        ranges = [tvm.ir.Range.from_min_extent(i, 1) for i in element.indices] + list(r.region)
        return tirx.BufferRegion(element.buffer, ranges)

    def stmt(self, s):
        if isinstance(s, tirx.BufferStore):
            value = self.expr(s.value)
            indices = [self.expr(i) for i in s.indices]
            if s.buffer not in self.mapping and value.same_as(s.value) and _same(indices, list(s.indices)):
                return s
            buffer, indices = self._target(s.buffer, indices)
            return tirx.BufferStore(buffer, value, indices)
        if isinstance(s, tirx.SeqStmt):
            parts = [self.stmt(x) for x in s]
            return s if _same(parts, list(s)) else tirx.SeqStmt(parts)
        if isinstance(s, tirx.For):
            body = self.stmt(s.body)
            return s if body.same_as(s.body) else loop_with(s, body=body)
        if isinstance(s, tirx.AttrStmt):
            value, body = self.expr(s.value), self.stmt(s.body)
            if value.same_as(s.value) and body.same_as(s.body):
                return s
            return tirx.AttrStmt(s.node, s.attr_key, value, body)
        if isinstance(s, tirx.IfThenElse):
            cond, then = self.expr(s.condition), self.stmt(s.then_case)
            other = None if s.else_case is None else self.stmt(s.else_case)
            if (
                cond.same_as(s.condition)
                and then.same_as(s.then_case)
                and (other is None or other.same_as(s.else_case))
            ):
                return s
            return tirx.IfThenElse(cond, then, other)
        if isinstance(s, tirx.Evaluate):
            value = self.expr(s.value)
            return s if value.same_as(s.value) else tirx.Evaluate(value)
        if isinstance(s, s_tir.SBlockRealize):
            values = [self.expr(v) for v in s.iter_values]
            predicate = self.expr(s.predicate)
            block = self.block(s.block)
            if _same(values, list(s.iter_values)) and predicate.same_as(s.predicate) and block.same_as(s.block):
                return s
            return s_tir.SBlockRealize(values, predicate, block)
        raise UnsupportedNode(type(s).__name__)

    def block(self, b: s_tir.SBlock) -> s_tir.SBlock:
        reads = [self.region(r) for r in b.reads]
        writes = [self.region(r) for r in b.writes]
        body = self.stmt(b.body)
        init = None if b.init is None else self.stmt(b.init)
        matches = [s_tir.MatchBufferRegion(m.buffer, self.region(m.source)) for m in b.match_buffers]
        if (
            _same(reads, list(b.reads))
            and _same(writes, list(b.writes))
            and body.same_as(b.body)
            and (init is None or init.same_as(b.init))
            and all(m.source.same_as(old.source) for m, old in zip(matches, b.match_buffers, strict=True))
        ):
            return b
        return s_tir.SBlock(
            b.iter_vars, reads, writes, b.name_hint, body, init, b.alloc_buffers, matches or None, b.annotations
        )


def substitute_buffers(func: tirx.PrimFunc, params: list, mapping: dict[tvm.ir.expr.Var, Element]) -> tirx.PrimFunc:
    """``func`` with parameters ``params`` and every access of a ``mapping`` buffer rewritten to its element.

    Raises
    ------
    UnsupportedNode
        When the body holds a node kind this module does not rebuild.
    """
    body = BufferSubstitution(mapping).stmt(func.body)
    return tirx.PrimFunc(params, body, func.ret_type, func.attrs)
