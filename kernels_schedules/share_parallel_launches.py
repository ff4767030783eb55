"""ShareParallelLaunches: consecutive parallel loops of a kernel run in one launch of the thread pool, a barrier
between them.

Each parallel loop at a kernel's top level is its own ``TVMBackendParallelLaunch``: the pool's threads are woken,
run their share and are joined, once per loop. A kernel whose tile reads an operand computed beside it (the int8
input a dynamic layer quantizes before its channel tiles, ``cpu_rules._schedule_layer``; a padded copy of a
depthwise conv's input) paid that twice, or ran the first loop on one thread to avoid it. TVM's CPU code generator
can instead run several parallel loops inside one launch: ``pragma_parallel_launch_point`` around them, and
``pragma_parallel_barrier_when_finish`` on every loop but the last, so that no thread starts a loop before every
thread has finished its share of the one before. Each loop is still cut into the same contiguous chunk per
thread. Always correct: each loop's iterations were independent already, and the barrier keeps the order.

PP-OCR's 1x1 conv 1x2x96x32 -> 200 channels in ``w8a8-dynamic`` (its float input quantized beside five channel
tiles), two threads of a Zen 4, interleaved: 7.31-7.63 us with a serial quantize before the tile's launch,
7.02-7.15 us with the quantize's rows shared in the tile's launch.

Only loops that follow each other directly in the kernel's root block are joined: a serial statement between them
would run on every thread of the launch. Applied after the schedules (default or tuned); MetaSchedule's own
measurements build without it.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from edgetvm.kernels_schedules.tir_nodes import (
    block_with_body,
    loop_with,
    realize_with_block,
    rewrite_prim_funcs,
)

LAUNCH_POINT = "pragma_parallel_launch_point"
BARRIER = "pragma_parallel_barrier_when_finish"


def _is_parallel(stmt) -> bool:
    return isinstance(stmt, tirx.For) and stmt.kind == tirx.ForKind.PARALLEL


def _with_barrier(loop: tirx.For) -> tirx.For:
    return loop_with(loop, annotations={**dict(loop.annotations), BARRIER: tirx.IntImm("int32", 1)})


def _one_launch(loops: list) -> tirx.Stmt:
    body = tirx.SeqStmt([*(_with_barrier(loop) for loop in loops[:-1]), loops[-1]])
    return tirx.AttrStmt(tirx.IntImm("int32", 0), LAUNCH_POINT, tirx.IntImm("int32", 1), body)


def _runs(stmts: list) -> list:
    """``stmts`` with each run of two or more consecutive parallel loops as one launch."""
    out, run = [], []
    for stmt in [*stmts, None]:
        if stmt is not None and _is_parallel(stmt):
            run.append(stmt)
            continue
        if len(run) >= 2:
            out.append(_one_launch(run))
        else:
            out.extend(run)
        run = []
        if stmt is not None:
            out.append(stmt)
    return out


def share_launches(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with the consecutive parallel loops of its root block in shared launches (unchanged if none)."""
    realize = func.body
    if not isinstance(realize, s_tir.SBlockRealize) or not isinstance(realize.block.body, tirx.SeqStmt):
        return func
    block = realize.block
    stmts = list(block.body)
    joined = _runs(stmts)
    if len(joined) == len(stmts):
        return func
    body = joined[0] if len(joined) == 1 else tirx.SeqStmt(joined)
    return func.with_body(realize_with_block(realize, block_with_body(block, body)))


@tvm.transform.module_pass(opt_level=0, name="ShareParallelLaunches")
class ShareParallelLaunches:
    """Every PrimFunc's consecutive top-level parallel loops in one launch (``share_launches``)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return rewrite_prim_funcs(mod, share_launches)
