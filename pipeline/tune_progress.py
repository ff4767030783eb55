"""What a tuning run has done so far: trials and failures per task, best time, the summed kernel time over time.

MetaSchedule calls :meth:`TuneProgress.callback` after each measured batch; the CLI turns the one-line
summaries into its progress display.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edgetvm.errors import last_line


class TuneProgress:
    """Counts per task (by name) and a history of (trials, seconds, summed best kernel time in ms)."""

    def __init__(
        self,
        names: list[str],
        weights: list[int],
        budget: int,
        started: float,
        progress: Callable[[str], None] | None = None,
    ):
        self.names, self.weights, self.budget, self.started = names, weights, budget, started
        self.progress = progress
        self.best_ms: dict[str, float | None] = {}
        self.trials: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.last_error = ""
        self.total = 0
        self.history: list[tuple[int, float, float]] = []

    def record(self, task: str, times_s: list[float | None], errors: list[str | None]) -> None:
        """One measured batch of ``task``: a time in seconds per candidate, or ``None`` and its error."""
        for secs, error in zip(times_s, errors, strict=True):
            self.total += 1
            self.trials[task] = self.trials.get(task, 0) + 1
            if secs is None:
                self.failures[task] = self.failures.get(task, 0) + 1
                self.errors[task] = self.last_error = last_line(error or "no time measured")
                continue
            best = self.best_ms.get(task)
            if best is None or secs * 1e3 < best:
                self.best_ms[task] = secs * 1e3
        estimate = self.estimate_ms()
        if estimate is not None:
            self.history.append((self.total, round(time.monotonic() - self.started, 2), estimate))
        if self.progress:
            self.progress(self.summary(task))

    def estimate_ms(self) -> float | None:
        """The model's summed best kernel times (each task times its copies), once every task has one."""
        values = [self.best_ms.get(n) for n in self.names]
        if any(v is None for v in values):
            return None
        return sum(v * w for v, w in zip(values, self.weights, strict=True))

    def summary(self, task: str) -> str:
        done = sum(1 for n in self.names if n in self.trials)
        estimate = self.estimate_ms()
        best = "n/a" if estimate is None else f"{estimate:.3f} ms"
        failed = sum(self.failures.values())
        return (
            f"tuning: trial {self.total}/{self.budget}, tasks touched {done}/{len(self.names)}, "
            f"kernels best {best}, failed {failed} (last: {task})"
        )

    def callback(self, searched: list[str]):
        """A MetaSchedule measure callback that feeds :meth:`record`; ``searched`` names the tasks in the order
        given to ``tune_tasks``, which is what its ``task_id`` counts (not the order of all the tasks)."""
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

        from edgetvm.pipeline.tuning_records import record_seconds

        progress = self

        @derived_object
        class _Callback(PyMeasureCallback):
            def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
                task = searched[int(task_id)]
                times, errors = [], []
                for built, ran in zip(builder_results, runner_results, strict=True):
                    error = built.error_msg or ran.error_msg
                    times.append(None if error else record_seconds(ran.run_secs))
                    errors.append(error)
                progress.record(task, times, errors)

        return _Callback()
