"""ReassociateRunTimeScales: ``(a * s) * p[c]`` becomes ``a * (s * p[c])`` in scheduled kernels, where ``s`` is a
run-time scalar and ``p`` a vector (a per-channel scale).

A dynamic layer's epilogue dequantizes its accumulator with the input's run-time scale, then with the weights'
per-channel scales: ``float(acc - zp[c]) * (max|x| / 127) * w_scale[c]``. Float multiplication is not associative,
so LLVM multiplies every output by both. Written ``float(acc - zp[c]) * ((max|x| / 127) * w_scale[c])`` the product
depends on the channel only: a tile's unrolled pixel rows share it, and it costs a multiply per channel vector of
the tile rather than per output vector. A static layer has the product folded into one constant already.
PP-OCR's 1x2x96x32 -> 200 conv in ``w8a8-dynamic`` (alone, its float input quantized in the same kernel, two
threads of a Zen 4, interleaved): 7.24 -> 6.7-6.8 us, as fast as without the second multiply at all. The product
rounds once before the multiply rather than after it: results move by an ulp at most.

Only expressions inside block bodies are rewritten (the statements are rebuilt around them); a ``Call``'s
arguments are rewritten too (a requantize's rounding).
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.ir import expr as ir_expr

from edgetvm.kernels_schedules.tir_nodes import (
    block_with_body,
    loop_with,
    realize_with_block,
    rewrite_prim_funcs,
)

_BINARY = (tirx.Add, tirx.Sub, tirx.Mul, tirx.Div, tirx.Min, tirx.Max)


def _is_scalar(expr) -> bool:
    """Whether ``expr`` is the same for every element: constants and loads of 0-d buffers, combined."""
    if isinstance(expr, (tirx.FloatImm, tirx.IntImm)):
        return True
    if isinstance(expr, ir_expr.TensorLoad):
        return len(expr.indices) == 0
    if isinstance(expr, tirx.Cast):
        return _is_scalar(expr.value)
    if isinstance(expr, _BINARY):
        return _is_scalar(expr.a) and _is_scalar(expr.b)
    return False


def _is_vector_load(expr) -> bool:
    """A load from a buffer with at most one axis longer than 1 (one scale per channel, or per row)."""
    if not isinstance(expr, ir_expr.TensorLoad):
        return False
    return sum(1 for extent in expr.source.shape if not (isinstance(extent, tirx.IntImm) and int(extent) == 1)) <= 1


def _is_float(expr) -> bool:
    return str(expr.ty.dtype).startswith("float")


def _same(new, old) -> bool:
    return all(a.same_as(b) for a, b in zip(new, old, strict=True))


def rewrite_expr(expr):
    """``expr`` with every ``(a * s) * load`` (``s`` scalar, ``a`` not) as ``a * (s * load)``."""
    if isinstance(expr, _BINARY):
        a, b = rewrite_expr(expr.a), rewrite_expr(expr.b)
        if (
            isinstance(expr, tirx.Mul)
            and _is_float(expr)
            and isinstance(a, tirx.Mul)
            and _is_scalar(a.b)
            and not _is_scalar(a.a)
            and _is_vector_load(b)
        ):
            return tirx.Mul(a.a, tirx.Mul(a.b, b))
        return expr if a.same_as(expr.a) and b.same_as(expr.b) else type(expr)(a, b)
    if isinstance(expr, tirx.Cast):
        value = rewrite_expr(expr.value)
        return expr if value.same_as(expr.value) else tirx.Cast(str(expr.ty.dtype), value)
    if isinstance(expr, tirx.Select):
        old = (expr.condition, expr.true_value, expr.false_value)
        parts = [rewrite_expr(x) for x in old]
        return expr if _same(parts, old) else tirx.Select(*parts)
    if isinstance(expr, ir_expr.Call) and isinstance(expr.op, tvm.ir.Op):
        args = [rewrite_expr(x) for x in expr.args]
        if _same(args, expr.args):
            return expr
        return ir_expr.Call(expr.op, args, expr.attrs, expr.ty_args, expr.span, ret_ty=expr.ty)
    return expr


def _rewrite_stmt(stmt):
    """``stmt`` with the values its blocks store rewritten; statements of other kinds are left as they are."""
    if isinstance(stmt, tirx.BufferStore):
        value = rewrite_expr(stmt.value)
        return stmt if value.same_as(stmt.value) else tirx.BufferStore(stmt.buffer, value, stmt.indices)
    if isinstance(stmt, tirx.SeqStmt):
        parts = [_rewrite_stmt(s) for s in stmt]
        return stmt if _same(parts, list(stmt)) else tirx.SeqStmt(parts)
    if isinstance(stmt, tirx.For):
        body = _rewrite_stmt(stmt.body)
        return stmt if body.same_as(stmt.body) else loop_with(stmt, body=body)
    if isinstance(stmt, tirx.AttrStmt):
        body = _rewrite_stmt(stmt.body)
        return stmt if body.same_as(stmt.body) else tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, body)
    if isinstance(stmt, s_tir.SBlockRealize):
        block = _rewrite_block(stmt.block)
        return stmt if block.same_as(stmt.block) else realize_with_block(stmt, block)
    return stmt


def _rewrite_block(block: s_tir.SBlock) -> s_tir.SBlock:
    body = _rewrite_stmt(block.body)
    return block if body.same_as(block.body) else block_with_body(block, body)


def reassociate(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with its run-time scalar scales multiplied into the loads they scale (unchanged if none)."""
    body = _rewrite_stmt(func.body)
    return func if body.same_as(func.body) else func.with_body(body)


@tvm.transform.module_pass(opt_level=0, name="ReassociateRunTimeScales")
class ReassociateRunTimeScales:
    """Every PrimFunc's ``(a * s) * load`` as ``a * (s * load)`` (``reassociate``)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return rewrite_prim_funcs(mod, reassociate)
