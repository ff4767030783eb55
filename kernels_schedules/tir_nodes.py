"""Rebuilding scheduled TIR nodes with one part changed, and applying a rewrite to every PrimFunc of a module: what
the passes over scheduled kernels (``share_parallel_launches``, ``reassociate_run_time_scales``) share. TVM 0.27
has no Python statement mutator for TIR."""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import s_tir, tirx


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
