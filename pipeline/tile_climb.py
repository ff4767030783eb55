"""Tile search around the default schedules: the decisions ``cpu_rules`` samples its tile sizes with.

``cpu_rules._tile_split`` chooses each register-tile size (rows, vectors of output channels) with a
``sample_categorical`` over the sizes that divide the loop, sorted, with the default as the decision. A trace
of the default schedule is then a point in a small grid, and its neighbours are one step up or down one
decision. Two searches use that:

- :func:`climb`: hill climbing from the best default-derived record, one step at a time, timing every
  neighbour not measured before beside the best, until none is faster or the budget is spent.
  ``pipeline.tune`` runs it on the hottest functions before MetaSchedule's evolutionary search, which in a
  short budget mostly measures samples of its own design space and rarely lands next to the defaults.
- :func:`tile_neighbours`: the same step as a MetaSchedule mutator, so the evolutionary search also moves the
  default-derived candidates of its population.

Besides the tiles, a neighbour of a parallel schedule is the same schedule run serially (:func:`serial`).
"""

from __future__ import annotations

from collections.abc import Callable


def decisions(trace) -> list[tuple[object, int, int]]:
    """``(instruction, decision, candidates)`` of every categorical decision of ``trace``, in order."""
    found = []
    for inst in trace.insts:
        if inst.kind.name != "SampleCategorical":
            continue
        decision = trace.get_decision(inst)
        if decision is not None:
            found.append((inst, int(decision), len(inst.attrs[0])))
    return found


def key(trace) -> tuple[int, ...]:
    """The point of ``trace`` in its grid of decisions, and how many loops it runs in parallel."""
    return (*(decision for _, decision, _ in decisions(trace)), _parallel_count(trace))


def _parallel_count(trace) -> int:
    return sum(inst.kind.name == "Parallel" for inst in trace.insts)


def serial(trace):
    """``trace`` without its ``Parallel`` instructions, or None when it has none.

    The same kernel on the calling thread: for a small function, waking the thread pool can cost more than
    the half of the work it takes over. A trace is straight-line code and a ``Parallel`` instruction has no
    outputs, so the rest replays unchanged.
    """
    from tvm.s_tir.schedule import Trace

    kept = [inst for inst in trace.insts if inst.kind.name != "Parallel"]
    if len(kept) == len(trace.insts):
        return None
    found = {inst: trace.get_decision(inst) for inst in kept}
    return Trace(kept, {inst: decision for inst, decision in found.items() if decision is not None})


def neighbours(trace) -> list:
    """Every trace one step away from ``trace``: one decision moved to the next candidate up or down, and the
    trace run serially (:func:`serial`) when it runs in parallel."""
    moved = []
    for inst, decision, count in decisions(trace):
        for step in (-1, 1):
            if 0 <= decision + step < count:
                moved.append(trace.with_decision(inst, decision + step, remove_postproc=True))
    if moved and (one_thread := serial(trace)) is not None:
        moved.append(one_thread)
    return moved


def climb(
    start,
    start_s: float | None,
    measure: Callable[[list], list[float | None]],
    budget: int,
    measured: set[tuple[int, ...]],
) -> int:
    """Hill-climb from ``start``; returns the number of candidates measured (re-measurements included).

    ``measure`` times a batch of traces (``None`` for a failure) and records them; ``measured`` holds the keys
    already measured (earlier runs included) and gains the new ones. Each round times the best point again
    beside its unmeasured neighbours, as many as the budget still allows, and compares within that batch: a
    time recorded minutes earlier, on a host whose neighbours change its speed, is no fair yardstick. The climb
    moves to the fastest neighbour when it beats the best, and stops when none does or the budget is spent.
    ``start_s`` (the start's recorded time) only stands in when its re-measurement fails.
    """
    used = 0
    best, best_s = start, start_s
    measured.add(key(start))
    while budget - used >= 2:
        fresh = [t for t in neighbours(best) if key(t) not in measured][: budget - used - 1]
        if not fresh:
            break
        times = measure([best, *fresh])
        used += 1 + len(fresh)
        measured.update(key(t) for t in fresh)
        if times[0] is not None:
            best_s = times[0]
        timed = [(s, t) for s, t in zip(times[1:], fresh, strict=True) if s is not None]
        fastest_s, fastest = min(timed, key=lambda pair: pair[0]) if timed else (None, None)
        if fastest_s is None or (best_s is not None and fastest_s >= best_s):
            break
        best, best_s = fastest, fastest_s
    return used


def tile_neighbours(seed: int | None = None):
    """A MetaSchedule mutator making one :func:`neighbours` step, chosen at random (``None`` without decisions).

    MetaSchedule's own unroll decisions are categorical too; stepping them is as valid.
    """
    import random

    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.mutator import PyMutator

    @derived_object
    class TileNeighbours(PyMutator):
        def __init__(self, rng: random.Random) -> None:
            self.rng = rng

        def _initialize_with_tune_context(self, context) -> None:
            pass

        def apply(self, trace, _rand_state=None):
            moves = neighbours(trace)
            return self.rng.choice(moves) if moves else None

        def clone(self):
            return TileNeighbours(random.Random(self.rng.random()))

    return TileNeighbours(random.Random(seed))
