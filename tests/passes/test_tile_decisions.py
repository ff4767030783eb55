"""The default schedules' tile sizes are tuning decisions: every neighbouring tile builds and computes right.

``cpu_rules._tile_split`` samples each tile size with ``sample_categorical`` (the default decision in a compile);
``pipeline.tile_climb`` walks from the default to the next sizes (a hill climb, and a MetaSchedule mutator).
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import s_tir, te, topi

from edgetvm.kernels_schedules.cpu_rules import choose_pair_tile, schedule_function
from edgetvm.pipeline.tile_climb import climb, key, neighbours, serial, tile_neighbours

# The tile decisions' candidates depend on the vector width: AVX2 (which every x86 host here runs) pins them.
X86 = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3", "num-cores": 2})
RNG = np.random.default_rng(0)


def _conv_relu(height: int, width: int, channels: int, out_channels: int, kernel: int):
    """An NHWC conv2d + ReLU as one PrimFunc, the shape of what fusion hands the default schedules."""
    data = te.placeholder((1, height, width, channels), "float32", name="x")
    weight = te.placeholder((kernel, kernel, channels, out_channels), "float32", name="w")
    out = topi.nn.relu(topi.nn.conv2d_nhwc(data, weight, 1, kernel // 2, 1))
    return te.create_prim_func([data, weight, out]).with_attr("global_symbol", "main")


def _categorical(trace) -> list:
    return [inst for inst in trace.insts if inst.kind.name == "SampleCategorical"]


def _run(func, trace, shape, kernel):
    sch = s_tir.Schedule(func)
    trace.apply_to_schedule(sch, remove_postproc=False)
    lib = tvm.compile(sch.mod, target=X86)
    height, width, channels, out_channels = shape
    x = RNG.standard_normal((1, height, width, channels)).astype("float32")
    w = RNG.standard_normal((kernel, kernel, channels, out_channels)).astype("float32")
    out = tvm.runtime.empty((1, height, width, out_channels), "float32")
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), out)
    pad = kernel // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, w.shape[:2], axis=(1, 2))  # N H W C kh kw
    expected = np.maximum(np.einsum("nhwcij,ijco->nhwo", windows, w, optimize=True), 0)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("shape", "kernel"), [((12, 12, 24, 48), 1), ((8, 16, 8, 32), 3)])
def test_every_tile_the_tuner_can_reach_matches_numpy(shape, kernel):
    func = _conv_relu(*shape, kernel)
    sch, rule = schedule_function(func, X86)
    assert rule == "reduction-tile"
    trace = sch.trace
    decisions = _categorical(trace)
    assert len(decisions) == 2  # rows, and vectors of output channels
    for inst in decisions:
        candidates = [int(c) for c in inst.attrs[0]]
        assert 1 not in candidates and candidates == sorted(candidates)
        for index in range(len(candidates)):
            _run(func, trace.with_decision(inst, index, remove_postproc=True), shape, kernel)


def _parallel(trace) -> int:
    return sum(inst.kind.name == "Parallel" for inst in trace.insts)


def test_the_mutator_moves_one_decision_one_step_or_drops_the_parallel_loop():
    sch, _ = schedule_function(_conv_relu(12, 12, 24, 48, 1), X86)
    trace = sch.trace
    assert _parallel(trace) == 1
    before = {i: int(trace.get_decision(inst)) for i, inst in enumerate(_categorical(trace))}
    mutator = tile_neighbours(seed=1)
    seen_serial = False
    for _ in range(20):
        mutated = mutator.apply(trace)
        after = {i: int(mutated.get_decision(inst)) for i, inst in enumerate(_categorical(mutated))}
        moved = [i for i in before if after[i] != before[i]]
        if _parallel(mutated) == 0:  # the same tiles, run serially
            seen_serial = True
            assert moved == []
        else:
            assert len(moved) == 1 and abs(after[moved[0]] - before[moved[0]]) == 1
    assert seen_serial


def test_the_serial_neighbour_matches_numpy_and_has_its_own_key():
    func = _conv_relu(12, 12, 24, 48, 1)
    trace = schedule_function(func, X86)[0].trace
    one_thread = serial(trace)
    assert _parallel(one_thread) == 0 and serial(one_thread) is None
    assert key(one_thread) != key(trace) and key(one_thread)[:-1] == key(trace)[:-1]
    _run(func, one_thread, (12, 12, 24, 48), 1)
    # its tiles still move
    assert any(_parallel(t) == 0 and key(t)[:-1] != key(trace)[:-1] for t in neighbours(one_thread))


def test_the_mutator_declines_a_trace_without_decisions():
    elementwise = te.placeholder((64,), "float32", name="x")
    func = te.create_prim_func([elementwise, topi.nn.relu(elementwise)])
    sch, rule = schedule_function(func, X86)
    assert rule == "elementwise"
    assert tile_neighbours(seed=0).apply(sch.trace) is None


@pytest.mark.parametrize(
    ("rows", "channels", "registers", "expected"),
    [
        (64, 24, 16, (4, 24)),  # 3 vectors x 4 rows: 12 multiply-adds per 7 loads
        (16, 88, 16, (8, 8)),  # 11 vectors: one at a time, 8 rows
        (48, 16, 16, (6, 16)),
        (8, 96, 16, (4, 24)),
        (64, 24, 32, (4, 24)),  # enough chains within 12 accumulators: the same tiles with 32 registers
        (14, 16, 16, (2, 16)),  # 14 rows: 2 within 12 accumulators (4 chains), all 16 registers allow
        (14, 16, 32, (7, 16)),  # ...and 7 rows x 2 vectors with 32: 14 chains (the trained CNN's 3x3 conv)
    ],
)
def test_pair_kernel_tiles_reuse_loads(rows, channels, registers, expected):
    tile = choose_pair_tile(rows, channels, registers)
    assert (tile.rows, tile.cols) == expected
    assert tile.rows * tile.cols // 8 <= registers * 3 // 4  # accumulators, with room for the operands


def test_the_climb_walks_to_the_fastest_tile_and_stops_there():
    sch, _ = schedule_function(_conv_relu(12, 12, 24, 48, 1), X86)
    trace = sch.trace
    sizes = [len(inst.attrs[0]) for inst in _categorical(trace)]
    best = (*(size - 1 for size in sizes), 1)  # the largest tiles, in parallel: several steps from the default
    assert key(trace) != best
    measure, log, batches = _grid_times(best)
    used = climb(trace, None, measure, budget=100, measured={key(trace)})
    assert used == len(log)
    # each batch re-times the point it climbs from, first, beside neighbours never measured before
    assert [b[0] for b in batches[1:]] == [max(b[1:], key=lambda k: -_cost(k, best)) for b in batches[:-1]]
    fresh = [k for b in batches for k in b[1:]]
    assert best in fresh and len(fresh) == len(set(fresh)) and key(trace) not in fresh
    assert batches[-1][0] == best  # it stopped at the best, whose neighbours were no faster
    assert len(fresh) < 2 * np.prod(sizes)  # a walk, not the whole grid


def _cost(point: tuple[int, ...], best: tuple[int, ...]) -> float:
    return 1.0 + sum(abs(a - b) for a, b in zip(point, best, strict=True))


def _grid_times(best: tuple[int, ...]):
    """A synthetic cost over the decision grid, lowest at ``best``; and logs of what was measured."""
    log: list[tuple[int, ...]] = []
    batches: list[list[tuple[int, ...]]] = []

    def measure(traces):
        keys = [key(t) for t in traces]
        log.extend(keys)
        batches.append(keys)
        return [_cost(k, best) for k in keys]

    return measure, log, batches


def test_the_climb_keeps_to_its_budget_and_skips_what_was_measured():
    sch, _ = schedule_function(_conv_relu(12, 12, 24, 48, 1), X86)
    trace = sch.trace
    measure, log, batches = _grid_times((*(len(inst.attrs[0]) - 1 for inst in _categorical(trace)), 1))
    assert climb(trace, 10.0, measure, budget=1, measured=set()) == 0  # no room for a neighbour beside the start
    assert climb(trace, 10.0, measure, budget=2, measured=set()) == 2 and len(batches) == 1
    # a second climb over the same measured set does not repeat the first one's neighbour
    first = batches[0][1]
    climb(trace, 10.0, measure, budget=100, measured={key(trace), first})
    assert first not in [k for b in batches[1:] for k in b[1:]]
