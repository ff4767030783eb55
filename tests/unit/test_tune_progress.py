"""Tuning bookkeeping: failures never count as fast, the summed kernel time, trials to 90% of the best."""

from __future__ import annotations

from edgetvm.pipeline.tune import TaskResult, TuningReport
from edgetvm.pipeline.tune_progress import TuneProgress


def test_failures_are_counted_and_never_become_the_best():
    lines = []
    progress = TuneProgress(["conv", "pool"], [2, 1], budget=8, started=0.0, progress=lines.append)
    progress.best_ms.update(conv=1.0, pool=0.5)  # the seeded default schedules
    progress.record("conv", [None, 0.002, None], ["LocalBuilder: Timeout, killed after 120 seconds", None, "run: boom"])
    assert progress.trials == {"conv": 3}
    assert progress.failures == {"conv": 2}
    assert progress.errors["conv"] == "run: boom"
    assert progress.best_ms["conv"] == 1.0  # 2 ms measured is slower than the default; failures are not 0 s
    progress.record("conv", [0.0004], [None])
    assert progress.best_ms["conv"] == 0.4
    assert progress.estimate_ms() == 0.4 * 2 + 0.5
    assert progress.history[-1][0] == 4
    assert "trial 4/8" in lines[-1] and "failed 2" in lines[-1]


def test_meta_schedule_task_ids_count_the_searched_tasks_only():
    import tvm
    from tvm.s_tir import meta_schedule as ms

    progress = TuneProgress(["a", "b", "c"], [1, 1, 1], budget=4, started=0.0)
    callback = progress.callback(["c", "a"])  # hottest first; b was not searched
    built = [ms.builder.BuilderResult("unused.so", None)]
    callback.apply(
        ms.TaskScheduler.create("round-robin"),
        1,
        [],
        built,
        [ms.runner.RunnerResult([tvm.runtime.convert(0.001)], None)],
    )
    assert progress.trials == {"a": 1} and progress.best_ms == {"a": 1.0}


def test_report_summary_and_time_to_90_percent():
    tasks = [
        TaskResult("conv", 2, "reduction-tile", 1.0, 0.5, trials=6, failures=1),
        TaskResult("pool", 1, "reduction-tile", 0.5, 0.5, trials=2, failures=2, error="build: no"),
    ]
    history = [(2, 10.0, 2.5), (4, 20.0, 1.6), (6, 30.0, 1.52), (8, 40.0, 1.5)]
    report = TuningReport("db/x86-abc", "x86", 8, 41.0, tasks, history)
    assert report.estimate_ms("default_ms") == 2.5 and report.estimate_ms("best_ms") == 1.5
    assert report.to_90_percent() == (4, 20.0)  # 1.6 ms is within 10% of the final 1.5 ms
    assert [t.tuned for t in tasks] == [True, False]
    summary = report.summary()
    assert "(3 failed)" in summary and "1.67x" in summary
    assert "every candidate of pool failed, it keeps the default schedule: build: no" in summary
    assert report.to_json()["to_90_percent"] == {"trials": 4, "wall_s": 20.0}
