"""The bench's scheduler and statistics, with fake variants and a fake clock."""

import itertools

import numpy as np
import pytest

from edgetvm.pipeline.bench import TimingPlan, interleaved_order, latency_stats, time_interleaved


def test_each_round_rotates_the_order_by_one():
    assert [interleaved_order(3, r) for r in range(4)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]


@pytest.mark.parametrize("count", [1, 2, 5])
def test_over_count_rounds_every_variant_takes_every_position_once(count):
    orders = [interleaved_order(count, r) for r in range(count)]
    for position in range(count):
        assert sorted(order[position] for order in orders) == list(range(count))
    assert all(sorted(order) == list(range(count)) for order in orders)


class FakeClock:
    """Time advances only when a fake variant runs, by that variant's cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def spend(self, ms):
        self.now += ms / 1e3


def _fake_runs(clock, costs, calls):
    def make(name, cost):
        def run():
            calls.append(name)
            clock.spend(cost)

        return run

    return {name: make(name, cost) for name, cost in costs.items()}


def test_rounds_are_interleaved_and_warmup_is_not_timed():
    clock, calls = FakeClock(), []
    runs = _fake_runs(clock, {"a": 1.0, "b": 2.0, "c": 3.0}, calls)
    samples, errors = time_interleaved(runs, TimingPlan(warmup=2, repeat=4), clock=clock)
    assert errors == {}
    rounds = [calls[i : i + 3] for i in range(0, len(calls), 3)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]] * 2
    assert {name: len(values) for name, values in samples.items()} == {"a": 4, "b": 4, "c": 4}
    assert samples["a"] == pytest.approx([1.0] * 4) and samples["c"] == pytest.approx([3.0] * 4)


def test_a_variant_that_raises_leaves_the_rotation_with_its_error():
    clock, calls = FakeClock(), []
    runs = _fake_runs(clock, {"a": 1.0, "b": 1.0}, calls)
    broken_calls = itertools.count()

    def broken():
        if next(broken_calls) == 2:
            raise RuntimeError("segment 3 of the arena\nout of memory")

    runs["broken"] = broken
    samples, errors = time_interleaved(runs, TimingPlan(warmup=1, repeat=5), clock=clock)
    assert set(samples) == {"a", "b"} and all(len(v) == 5 for v in samples.values())
    assert errors == {"broken": "failed while timing: RuntimeError: out of memory"}
    assert calls.count("a") == calls.count("b") == 6


def test_latency_stats_match_numpy():
    samples = [5.0, 1.0, 3.0, 2.0, 4.0, 100.0]
    stats = latency_stats(samples)
    assert stats["n"] == 6
    assert stats["median"] == pytest.approx(3.5)
    assert stats["p90"] == pytest.approx(np.percentile(samples, 90))
    assert stats["p99"] == pytest.approx(np.percentile(samples, 99))
    assert stats["min"] == 1.0 and stats["median"] <= stats["p90"] <= stats["p99"]


def test_settling_runs_each_variant_untimed_before_its_timed_run():
    clock, calls = FakeClock(), []
    runs = _fake_runs(clock, {"a": 1.0, "b": 4.0}, calls)
    samples, _ = time_interleaved(runs, TimingPlan(warmup=0, repeat=2, settle_ms=3.0), clock=clock)
    # a: untimed runs until 3 ms have passed (3 runs), then the timed one; b: one untimed run (4 ms > 3 ms), then timed
    assert calls == ["a"] * 4 + ["b"] * 2 + ["b"] * 2 + ["a"] * 4
    assert samples == {"a": pytest.approx([1.0, 1.0]), "b": pytest.approx([4.0, 4.0])}


def test_a_remote_timer_is_timed_by_its_own_clock_and_settles_itself():
    from edgetvm.pipeline.bench import RemoteTimer

    clock, calls, settles = FakeClock(), [], []
    runs = _fake_runs(clock, {"host": 1.0}, calls)

    def board_run(settle_s):
        settles.append(settle_s)
        clock.spend(50.0)  # the round trip, which the host's clock would count
        return 0.004

    runs["board"] = RemoteTimer(board_run)
    rounds = []
    samples, errors = time_interleaved(
        runs, TimingPlan(warmup=1, repeat=3, settle_ms=20.0), clock=clock, progress=rounds.append
    )
    assert errors == {}
    assert samples["board"] == pytest.approx([4.0, 4.0, 4.0])
    assert settles == [0.02] * 4
    assert len(samples["host"]) == 3 and all(s == pytest.approx(1.0) for s in samples["host"])
    assert rounds == [
        "timing 2 variants interleaved: warm-up round 1/1",
        "timing 2 variants interleaved: round 1/3",
        "timing 2 variants interleaved: round 2/3",
        "timing 2 variants interleaved: round 3/3",
    ]
