"""Rebuilding scheduled TIR nodes with one part changed, a mutator over the node kinds scheduled kernels hold, and
applying a rewrite to every PrimFunc of a module: what the passes over scheduled kernels
(``share_parallel_launches``, ``reassociate_run_time_scales``, ``round_in_conversion``, ``pack_small_results``)
share. TVM 0.27 has no Python statement mutator for TIR."""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import s_tir, tirx
from tvm.ir import expr as ir_expr
from tvm.ir.prim import expr as prim


def block_with_body(block: s_tir.SBlock, body: tirx.Stmt) -> s_tir.SBlock:
    """``block`` with ``body`` in place of its own (iteration variables, buffers and annotations kept)."""
    return s_tir.SBlock(
        block.iter_vars,
        block.reads,
        block.writes,
        block.name_hint,
        body,
        block.init,
        block.alloc_buffers,
        block.match_buffers,
        block.annotations,
    )


def realize_with_block(realize: s_tir.SBlockRealize, block: s_tir.SBlock) -> s_tir.SBlockRealize:
    """``realize`` of ``block`` in place of its own (bindings and predicate kept)."""
    return s_tir.SBlockRealize(realize.iter_values, realize.predicate, block)


def loop_with(loop: tirx.For, body: tirx.Stmt | None = None, annotations: dict | None = None) -> tirx.For:
    """``loop`` with another body or other annotations (its variable, range and kind kept)."""
    return tirx.For(
        loop.loop_var,
        loop.min,
        loop.extent,
        loop.kind,
        loop.body if body is None else body,
        loop.thread_binding,
        loop.annotations if annotations is None else annotations,
        loop.step,
    )


def rewrite_prim_funcs(mod: tvm.IRModule, rewrite: Callable[[tirx.PrimFunc], tirx.PrimFunc]) -> tvm.IRModule:
    """``mod`` with every PrimFunc replaced by ``rewrite(func)`` where that returns a new function."""
    updated = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            rewritten = rewrite(func)
            if not rewritten.same_as(func):
                updated[gvar] = rewritten
    for gvar, func in updated.items():
        mod[gvar] = func
    return mod


class UnsupportedNode(Exception):
    """A node kind ``TIRMutator`` does not rebuild."""


_LEAVES = (prim.IntImm, prim.FloatImm, ir_expr.StringImm, ir_expr.Var)
_BINARY = (prim.BinaryOpExpr, prim.CmpExpr, prim.And, prim.Or)


def _same(new, old) -> bool:
    return len(new) == len(old) and all(a.same_as(b) for a, b in zip(new, old, strict=True))


class TIRMutator:
    """Rebuilds a scheduled kernel's statements and expressions bottom-up, a node only where a part changed.

    Subclasses override the hooks: ``rewrite`` (an expression whose operands are rewritten already), ``load`` and
    ``store`` (a buffer access with its rewritten indices), ``region`` (a block's read or write region). A node kind
    not rebuilt here raises ``UnsupportedNode``, so that no rewrite is silently skipped.
    """

    def rewrite(self, e):
        return e

    def load(self, load, indices: list):
        return load if _same(indices, list(load.indices)) else tirx.BufferLoad(load.source, indices)

    def store(self, store, value, indices: list):
        if value.same_as(store.value) and _same(indices, list(store.indices)):
            return store
        return tirx.BufferStore(store.buffer, value, indices)

    def region(self, r):
        return r

    def expr(self, e):
        return self.rewrite(self._rebuild(e))

    def _rebuild(self, e):
        if isinstance(e, _LEAVES):
            return e
        if isinstance(e, ir_expr.TensorLoad):
            return self.load(e, [self.expr(i) for i in e.indices])
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
            return e if _same(args, list(e.args)) else ir_expr.Call(e.op, args, e.attrs, e.ty_args, e.span, ret_ty=e.ty)
        raise UnsupportedNode(type(e).__name__)

    def stmt(self, s):
        if isinstance(s, tirx.BufferStore):
            return self.store(s, self.expr(s.value), [self.expr(i) for i in s.indices])
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
            old = [s.condition, s.then_case, s.else_case]
            parts = [
                self.expr(s.condition),
                self.stmt(s.then_case),
                None if s.else_case is None else self.stmt(s.else_case),
            ]
            if all(a is None and b is None or a is not None and a.same_as(b) for a, b in zip(parts, old, strict=True)):
                return s
            return tirx.IfThenElse(*parts)
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

    def prim_func(self, func: tirx.PrimFunc) -> tirx.PrimFunc:
        """``func`` with its body rewritten: the same object when nothing changed, or when the body holds a node
        kind this mutator does not rebuild (what an optimising rewrite may skip; a rewrite that must reach every
        access, such as ``substitute_buffers``, calls ``stmt`` and gets the ``UnsupportedNode``)."""
        try:
            body = self.stmt(func.body)
        except UnsupportedNode:
            return func
        return func if body.same_as(func.body) else func.with_body(body)
