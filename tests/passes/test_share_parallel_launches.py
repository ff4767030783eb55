"""ShareParallelLaunches: consecutive parallel loops of a kernel in one launch, a barrier between them."""

import numpy as np
import pytest
import tvm
from tvm import s_tir, tirx
from tvm.script import tirx as T

from edgetvm.kernels_schedules.share_parallel_launches import BARRIER, LAUNCH_POINT, share_launches

HOST = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})


# The second loop reads the rows the other thread wrote in the first: wrong without the barrier.
@T.prim_func(s_tir=True)
def _two_loops(a: T.Buffer((64, 16), "float32"), c: T.Buffer((64, 16), "float32")):
    b = T.sblock_alloc_buffer((64, 16), "float32")
    for i in T.parallel(64):
        for j in T.vectorized(16):
            with T.sblock("double"):
                vi, vj = T.axis.remap("SS", [i, j])
                b[vi, vj] = a[vi, vj] * T.float32(2)
    for i in T.parallel(64):
        for j in T.vectorized(16):
            with T.sblock("mirror"):
                vi, vj = T.axis.remap("SS", [i, j])
                c[vi, vj] = b[63 - vi, vj] + T.float32(1)


@T.prim_func(s_tir=True)
def _serial_between(a: T.Buffer((64, 16), "float32"), c: T.Buffer((64, 16), "float32")):
    b = T.sblock_alloc_buffer((64, 16), "float32")
    for i in T.parallel(64):
        for j in range(16):
            with T.sblock("double"):
                vi, vj = T.axis.remap("SS", [i, j])
                b[vi, vj] = a[vi, vj] * T.float32(2)
    for j in range(16):
        with T.sblock("first_row"):
            vj = T.axis.remap("S", [j])
            b[0, vj] = T.float32(0)
    for i in T.parallel(64):
        for j in range(16):
            with T.sblock("mirror"):
                vi, vj = T.axis.remap("SS", [i, j])
                c[vi, vj] = b[63 - vi, vj] + T.float32(1)


@T.prim_func(s_tir=True)
def _one_loop(a: T.Buffer((64, 16), "float32"), c: T.Buffer((64, 16), "float32")):
    for i in T.parallel(64):
        for j in range(16):
            with T.sblock("double"):
                vi, vj = T.axis.remap("SS", [i, j])
                c[vi, vj] = a[vi, vj] * T.float32(2)


def _root_statements(func: tirx.PrimFunc) -> list:
    body = func.body.block.body
    return list(body) if isinstance(body, tirx.SeqStmt) else [body]


def test_two_parallel_loops_become_one_launch_with_a_barrier():
    (launch,) = _root_statements(share_launches(_two_loops))
    assert isinstance(launch, tirx.AttrStmt) and launch.attr_key == LAUNCH_POINT
    first, second = launch.body
    assert BARRIER in first.annotations and BARRIER not in second.annotations
    assert first.kind == second.kind == tirx.ForKind.PARALLEL


def test_a_serial_statement_between_keeps_the_launches_apart():
    """A serial loop inside a launch would run on every thread: nothing is joined across it."""
    shared = share_launches(_serial_between)
    assert [type(stmt) for stmt in _root_statements(shared)] == [tirx.For] * 3
    assert not any(BARRIER in stmt.annotations for stmt in _root_statements(shared))


def test_a_single_parallel_loop_is_left_alone():
    assert share_launches(_one_loop).same_as(_one_loop)


def _built(func: tirx.PrimFunc):
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=HOST)


def test_the_library_calls_the_barrier_and_computes_the_same_numbers():
    shared = _built(share_launches(_two_loops))
    assert "TVMBackendParallelBarrier" in shared.mod.inspect_source("ll")
    a = np.random.default_rng(0).standard_normal((64, 16)).astype("float32")
    expected = a[::-1] * 2 + 1
    out = tvm.runtime.tensor(np.zeros((64, 16), "float32"))
    for _ in range(200):  # the second loop's rows come from the other thread's share of the first
        shared["main"](tvm.runtime.tensor(a), out)
        np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("func", [_serial_between, _one_loop], ids=["serial-between", "one-loop"])
def test_no_barrier_where_nothing_was_joined(func):
    assert "TVMBackendParallelBarrier" not in _built(share_launches(func)).mod.inspect_source("ll")


def test_the_root_block_keeps_its_buffers():
    shared = share_launches(_two_loops)
    assert [buf.name for buf in shared.body.block.alloc_buffers] == ["b"]
    assert isinstance(shared.body, s_tir.SBlockRealize)


def test_the_tuner_builds_candidates_as_a_compile_does():
    """MetaSchedule's builder runs a compile's passes over scheduled kernels: a candidate is timed as built."""
    from edgetvm.pipeline.tune import _build

    built = _build(tvm.IRModule({"main": _two_loops}), HOST, None)
    assert "TVMBackendParallelBarrier" in built.inspect_source("ll")
