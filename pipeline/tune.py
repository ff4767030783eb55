"""Tune: search faster schedules for a model's fused functions with MetaSchedule, seeded with the defaults.

The tasks are the PrimFuncs that ``ApplyCPUSchedules`` sees in a compile (after edgetvm's layout passes,
legalization and fusion, and after quantization when the model was quantized), so a record found here
matches a function that ``compile --db`` builds. Each task's first record is its default schedule
(``kernels_schedules.cpu_rules``), measured with the same builder and runner as the candidates: the search
starts from it, and a compile keeps it unless a candidate measured faster. Half the budget first climbs the
default schedules' tile decisions (``pipeline.tile_climb``), hottest function first; MetaSchedule's
evolutionary search gets the rest.

Records live in MetaSchedule's JSON database (``database_workload.json`` + ``database_tuning_record.json``)
in a sub-directory of the database directory per target (:func:`target_db_dir`); ``tuning.json`` beside
them says what each run did. A second run over the same directory continues from its records: measured
candidates are not measured again, and the best ones seed the next search. Candidates that fail to build,
run or finish are stored as failures (MetaSchedule's ``1e10`` seconds), never as fast.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetvm.cache import write_text_atomic
from edgetvm.errors import BuildError, InputError, last_line
from edgetvm.pipeline.ingest import ImportedModel
from edgetvm.pipeline.tuning_records import FAILED_SECONDS, record_seconds
from edgetvm.targets import TargetPreset

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
REPORT = "tuning.json"
DEFAULT_TRIALS_PER_ITER = 16
# The search gives each task it reaches at least this many batches of candidates: a budget spread one batch per
# task over sixty tasks measures a handful of candidates each and beats no default (see hottest_first).
MIN_BATCHES_PER_TASK = 2
NOT_SEARCHED = "not searched"
SEED_BATCH = 16  # default schedules built per builder call (and per progress line) when seeding
BUILD_TIMEOUT_S = 120.0  # one candidate's compile; a worker's start (import tvm) is not counted: see _build


@dataclass(frozen=True)
class TuneOptions:
    """What ``edgetvm tune`` was asked to do."""

    trials: int
    db: Path
    trials_per_iter: int | None = None  # candidates measured per search iteration; None: 16, or trials if fewer
    population: int = 64  # evolutionary search's population per task; MetaSchedule's 512 takes minutes per task
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise InputError(f"--trials must be at least 1, got {self.trials}")
        if self.population < 1:
            raise InputError(f"--population must be at least 1, got {self.population}")
        if self.trials_per_iter is not None and not 1 <= self.trials_per_iter <= self.trials:
            raise InputError(
                f"--trials-per-iter must be between 1 and --trials ({self.trials}), got {self.trials_per_iter}"
            )

    @property
    def batch(self) -> int:
        """Candidates measured per search iteration."""
        return self.trials_per_iter or min(DEFAULT_TRIALS_PER_ITER, self.trials)


@dataclass
class Measurer:
    """Where candidates are compiled and timed: a MetaSchedule builder and runner, and how many run at once.

    ``scratch`` is the directory the builder exports candidates into (a ``tempfile.TemporaryDirectory``, see
    :func:`local_builder`): it goes with the measurer, when it is collected or the process ends.
    """

    builder: Any
    runner: Any
    device: str = "cpu"
    workers: int = 1
    scratch: Any = None


@dataclass
class TuningTask:
    """One fused PrimFunc of the model (``weight`` identical copies) and its default schedule's rule."""

    name: str
    mod: Any  # IRModule {"main": PrimFunc}, the database workload
    weight: int
    rule: str
    default: Any = None  # the default schedule's trace, once seed_defaults made it


@dataclass
class TaskResult:
    name: str
    weight: int
    rule: str
    default_ms: float | None  # None: the default schedule failed to build or run
    best_ms: float | None
    trials: int = 0
    failures: int = 0
    error: str | None = None  # the last failure's reason

    @property
    def tuned(self) -> bool:
        return self.best_ms is not None and (self.default_ms is None or self.best_ms < self.default_ms)


@dataclass
class Confirmation:
    """What :func:`confirm_winners` did: functions whose winner it re-timed, and those left on the default."""

    re_timed: list[str] = field(default_factory=list)
    default_kept: list[str] = field(default_factory=list)
    unconfirmed: list[str] = field(default_factory=list)  # best record never re-timed (rounds ran out, or failed)
    candidates: int = 0  # schedules measured (not counted in the trial budget)


@dataclass
class TuningReport:
    """What one ``tune`` run did; saved as ``tuning.json`` in the target's database directory."""

    db: str
    target: str
    trials: int
    wall_s: float
    tasks: list[TaskResult]
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (trial, seconds, model estimate ms)
    population: int | None = None  # the evolutionary search's, per task
    trials_per_iter: int | None = None
    confirmation: Confirmation | None = None
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def estimate_ms(self, which: str) -> float | None:
        values = [getattr(t, which) for t in self.tasks]
        if any(v is None for v in values):
            return None
        return sum(v * t.weight for v, t in zip(values, self.tasks, strict=True))

    def to_90_percent(self) -> tuple[int, float] | None:
        """(trials, seconds) until the summed kernel time first came within 10% of where this run ended."""
        if not self.history:
            return None
        final = self.history[-1][2]
        return next(((n, s) for n, s, ms in self.history if ms * 0.9 <= final), None)

    def summary(self) -> str:
        default, tuned = self.estimate_ms("default_ms"), self.estimate_ms("best_ms")
        faster = [t.name for t in self.tasks if t.tuned]
        failed = [t.name for t in self.tasks if t.trials and t.failures == t.trials]
        unsearched = [t.name for t in self.tasks if t.error and t.error.startswith(NOT_SEARCHED)]
        searched = [t.name for t in self.tasks if t.trials]
        failures = sum(t.failures for t in self.tasks)
        lines = [
            f"tuned {len(self.tasks)} tasks for {self.target} in {self.trials} trials ({failures} failed), "
            f"{self.wall_s:.0f} s; records in {self.db}",
            f"faster than the default schedule: {len(faster)} tasks ({', '.join(faster) or 'none'})",
        ]
        if default is not None and tuned is not None:
            lines.append(f"summed kernel time: default {default:.4f} ms, tuned {tuned:.4f} ms ({default / tuned:.2f}x)")
        if unsearched:
            lines.append(
                f"measured candidates of the {len(searched)} hottest functions; {len(unsearched)} colder ones "
                "keep their defaults (more --trials reach them)"
            )
        reach = self.to_90_percent()
        if reach:
            lines.append(f"within 10% of this run's best after {reach[0]} trials, {reach[1]:.0f} s")
        done = self.confirmation
        if done and done.re_timed:
            lines.append(
                f"re-timed {len(done.re_timed)} winners beside their defaults ({done.candidates} more measurements): "
                f"{len(done.default_kept)} were no faster and keep the default"
                + (f"; {len(done.unconfirmed)} best records were not re-timed" if done.unconfirmed else "")
            )
        for name in failed:
            error = next(t.error for t in self.tasks if t.name == name)
            lines.append(f"every candidate of {name} failed, it keeps the default schedule: {error}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        reach = self.to_90_percent()
        return {
            "created": self.created,
            "db": self.db,
            "target": self.target,
            "trials": self.trials,
            "population": self.population,
            "trials_per_iter": self.trials_per_iter,
            "wall_s": round(self.wall_s, 1),
            "kernels_ms": {"default": self.estimate_ms("default_ms"), "tuned": self.estimate_ms("best_ms")},
            "to_90_percent": {"trials": reach[0], "wall_s": round(reach[1], 1)} if reach else None,
            "confirmation": asdict(self.confirmation) if self.confirmation else None,
            "tasks": [asdict(t) for t in self.tasks],
            "history": [list(point) for point in self.history],
        }


def target_db_dir(db: str | Path, target: TargetPreset) -> Path:
    """The database directory of ``target`` inside ``db``: records of one target never mix with another's.

    The key covers the thread count the candidates run with: times measured on another count rank schedules
    differently (a database written before candidates ran on the target's threads is not reused).
    """
    measured_as = {"llvm": target.llvm, "threads": target.threads}
    key = hashlib.sha256(json.dumps(measured_as, sort_keys=True).encode()).hexdigest()[:10]
    return Path(db) / f"{target.name}-{key}"


def open_database(db: str | Path, target: TargetPreset, create: bool):
    """MetaSchedule's JSON database of ``target`` in ``db``."""
    directory = target_db_dir(db, target)
    if not create and not (directory / "database_tuning_record.json").is_file():
        raise InputError(
            f"--db {db}: no tuning records for target {target.name} (expected {directory}); run 'edgetvm tune' "
            "with this target first"
        )
    directory.mkdir(parents=True, exist_ok=True)
    return json_database(directory)


def json_database(directory: str | Path):
    """MetaSchedule's JSON database in ``directory`` (one target's, see :func:`target_db_dir`)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(work_dir=str(directory), module_equality="structural")


def scheduling_module(imported: ImportedModel, target: TargetPreset):
    """The model after layout passes, legalization and fusion: the functions ``ApplyCPUSchedules`` gets."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    from edgetvm.kernels_schedules.pipeline import fusion_passes, layout_passes

    tvm_target = target.tvm_target()
    with tvm_target:
        passes = cpu_generic.library_dispatch_passes(tvm_target) + layout_passes(tvm_target)
        passes += fusion_passes(tvm_target)  # as the build fuses: the tuned functions are the built ones
        return tvm.transform.Sequential(passes)(imported.mod)


def workload_module(func):
    """The database workload of a fused PrimFunc: itself as ``main``, exported (MetaSchedule builds it alone)."""
    import tvm

    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def tuning_tasks(imported: ImportedModel, target: TargetPreset) -> list[TuningTask]:
    """The model's distinct, not yet scheduled PrimFuncs, with their default schedule's rule."""
    import tvm_ffi
    from tvm import tirx

    from edgetvm.kernels_schedules.apply_schedules import is_scheduled

    mod = scheduling_module(imported, target)
    tasks: list[TuningTask] = []
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
            continue
        workload = workload_module(func)
        same = next((t for t in tasks if tvm_ffi.structural_equal(t.mod, workload)), None)
        if same is not None:
            same.weight += 1
            continue
        tasks.append(TuningTask(gvar.name_hint, workload, 1, ""))
    return tasks


def _best_ms(database, task: TuningTask) -> float | None:
    from edgetvm.kernels_schedules.apply_tuned_schedules import best_record

    best = best_record(database, task.mod)
    return None if best is None else record_seconds(best.run_secs) * 1e3


Measured = tuple[list[float] | None, str | None]  # a candidate's run_secs, or None and why it failed


def _measure_batch(measurer: Measurer, target, schedules: list, funcs: list) -> list[Measured]:
    """Build ``schedules`` (of ``funcs``) in one call, then time each the way MetaSchedule times a candidate.

    One call: MetaSchedule's ``LocalBuilder`` starts a pool of worker processes per call (each importing TVM,
    seconds), so seeding sixty defaults one call each spent most of its time starting workers.
    """
    from tvm.s_tir import meta_schedule as ms

    results: list[Measured] = []
    built = measurer.builder.build([ms.builder.BuilderInput(sch.mod, target) for sch in schedules])
    for result, func in zip(built, funcs, strict=True):
        if result.error_msg:
            results.append((None, f"build: {last_line(result.error_msg)}"))
            continue
        args_info = ms.arg_info.ArgInfo.from_prim_func(func)
        (future,) = measurer.runner.run([ms.runner.RunnerInput(result.artifact_path, measurer.device, args_info)])
        ran = future.result()
        if ran.error_msg:
            results.append((None, f"run: {last_line(ran.error_msg)}"))
        else:
            results.append(([float(secs) for secs in ran.run_secs], None))
    return results


def _commit(database, task: TuningTask, trace, run_secs: list[float] | None, target) -> list[float]:
    """Record the schedule ``trace`` of ``task`` with its times, a failure (MetaSchedule's 1e10 s) when it has
    none."""
    from tvm.s_tir import meta_schedule as ms

    secs = run_secs if run_secs is not None else [FAILED_SECONDS * 10]
    workload = database.commit_workload(task.mod)
    args_info = ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])
    database.commit_tuning_record(ms.database.TuningRecord(trace, workload, secs, target, args_info))
    return secs


def climb_hottest(database, tasks: list[TuningTask], target, measurer: Measurer, tracker, options, budget: int) -> int:
    """:func:`climb_task` over ``tasks`` in order (hottest first), at most two batches' worth each.

    Every task with a default schedule can climb, those MetaSchedule refuses included; a climb ends where no
    neighbouring tile is faster, typically after a few candidates, so the budget reaches many more functions
    than the evolutionary search does.
    """
    used = 0
    for task in tasks:
        share = min(budget - used, MIN_BATCHES_PER_TASK * options.batch // 2)
        if share <= 0:
            break
        used += climb_task(database, task, target, measurer, tracker, share)
    if used:
        log.info("climbing the default tiles measured %d candidates", used)
    return used


def climb_task(database, task: TuningTask, target, measurer: Measurer, tracker, budget: int) -> int:
    """Hill-climb ``task``'s default tile decisions (``pipeline.tile_climb``); returns the candidates measured.

    Starts from the fastest default-derived record (the default schedule itself on a first run) and skips every
    decision already measured, so a second run goes on from where the first stopped. Every batch is committed
    to the database, the re-timed starting point included.
    """
    import tvm

    from edgetvm.pipeline import tile_climb

    workload = database.commit_workload(task.mod)
    records = [r for r in database.get_top_k(workload, 1 << 20) if tile_climb.decisions(r.trace)]
    measured = {tile_climb.key(r.trace) for r in records}

    def measure(traces: list) -> list[float | None]:
        schedules = []
        for trace in traces:
            sch = tvm.s_tir.Schedule(task.mod)
            trace.apply_to_schedule(sch, remove_postproc=True)
            schedules.append(sch)
        times, errors = [], []
        for trace, (run_secs, error) in zip(
            traces, _measure_batch(measurer, target, schedules, [task.mod["main"]] * len(schedules)), strict=True
        ):
            times.append(record_seconds(_commit(database, task, trace, run_secs, target)))
            errors.append(error)
        tracker.record(task.name, times, errors)
        return times

    if not records:  # no default schedule with tile decisions (an elementwise function): nothing to climb
        return 0
    return tile_climb.climb(records[0].trace, record_seconds(records[0].run_secs), measure, budget, measured)


def seed_defaults(database, tasks: list[TuningTask], target: TargetPreset, measurer: Measurer, progress=None):
    """Commit each task's default schedule, measured, as its first record (skipped when it has records).

    Returns ``{task name: (default ms or None, error or None)}``.
    """
    import tvm

    from edgetvm.kernels_schedules.cpu_rules import schedule_function

    tvm_target = target.tvm_target()
    defaults: dict[str, tuple[float | None, str | None]] = {}
    pending = []
    for task in tasks:
        func = task.mod["main"]
        try:
            sch, task.rule = schedule_function(func, tvm_target)
        except Exception as err:  # a ScheduleError: this function compiles naive by default
            task.rule = "naive"
            sch = tvm.s_tir.Schedule(task.mod)
            log.debug("no default schedule for %s: %s", task.name, err)
        task.default = sch.trace
        if database.has_workload(task.mod) and _best_ms(database, task) is not None:
            defaults[task.name] = (_recorded_default_ms(database, task, sch.trace), None)
        else:
            pending.append((task, sch))
    for start in range(0, len(pending), SEED_BATCH):
        batch = pending[start : start + SEED_BATCH]
        if progress:
            progress(f"measuring the default schedules ({start + len(batch)}/{len(pending)})")
        funcs = [task.mod["main"] for task, _ in batch]
        measured = _measure_batch(measurer, tvm_target, [sch for _, sch in batch], funcs)
        for (task, sch), (run_secs, error) in zip(batch, measured, strict=True):
            _commit(database, task, sch.trace, run_secs, tvm_target)
            defaults[task.name] = (None if run_secs is None else sum(run_secs) / len(run_secs) * 1e3, error)
    return defaults


def _trace_key(trace) -> str:
    return json.dumps(trace.as_json(remove_postproc=True), sort_keys=True, default=str)


def _winner(database, task: TuningTask) -> tuple[Any, str] | None:
    """``(trace, key)`` of ``task``'s fastest record when that is not its default schedule; None otherwise."""
    from edgetvm.kernels_schedules.apply_tuned_schedules import best_record

    best = best_record(database, task.mod) if task.default is not None else None
    if best is None:
        return None
    key = _trace_key(best.trace)
    return None if key == _trace_key(task.default) else (best.trace, key)


def confirm_winners(work_dir: Path, tasks: list[TuningTask], target, measurer: Measurer, progress=None, rounds=4):
    """Re-time every function's best record beside its default schedule, in one batch, and keep the faster.

    A candidate timed once, minutes away from the default's timing on a host whose neighbours change its speed,
    can be adopted on noise (PP-OCR: tuned functions 5-15% slower than their defaults in the model). Each
    winner and its default are timed again back to back (default, winner, winner, default), their times
    replace the older ones (``tuning_records.keep_latest``), and a winner that is no faster drops below the
    default. A record that then ranks first is confirmed the same way, ``rounds`` times at most.

    Returns ``(database reopened on the rewritten records, Confirmation)``.
    """
    from edgetvm.pipeline import tuning_records

    done = Confirmation()
    confirmed: set[tuple[str, str]] = set()
    for _ in range(rounds):
        tuning_records.keep_latest(work_dir)
        database = json_database(work_dir)
        winners = [(task, _winner(database, task)) for task in tasks]
        pending = [(task, winner) for task, winner in winners if winner and (task.name, winner[1]) not in confirmed]
        if not pending:
            break
        if progress:
            progress(f"timing {len(pending)} tuned functions again beside their default schedules")
        re_timed = _retime_pairs(database, [(task, trace) for task, (trace, _) in pending], target, measurer)
        done.candidates += 4 * len(pending)
        confirmed.update((task.name, key) for task, (_, key) in pending)  # tried: not again, even if it failed
        done.re_timed += [name for name in re_timed if name not in done.re_timed]
    tuning_records.keep_latest(work_dir)
    database = json_database(work_dir)
    for task in tasks:
        winner = _winner(database, task)
        if winner is None:
            if task.name in done.re_timed:
                done.default_kept.append(task.name)
        elif (task.name, winner[1]) not in confirmed:
            done.unconfirmed.append(task.name)
    return database, done


def _retime_pairs(database, pending: list, target, measurer: Measurer) -> list[str]:
    """Time each ``(task, trace)`` and the task's default as default, trace, trace, default in one batch; commit
    one record per schedule holding both of its timings. A pair with a failed timing commits nothing: its
    records keep the times they had (a build timing out here says nothing about the schedule)."""
    import tvm

    schedules, funcs = [], []
    for task, trace in pending:
        for which in (task.default, trace, trace, task.default):
            sch = tvm.s_tir.Schedule(task.mod)
            which.apply_to_schedule(sch, remove_postproc=False)
            schedules.append(sch)
            funcs.append(task.mod["main"])
    measured = _measure_batch(measurer, target, schedules, funcs)
    re_timed = []
    for index, (task, trace) in enumerate(pending):
        times = [run_secs for run_secs, _ in measured[4 * index : 4 * index + 4]]
        if any(run_secs is None for run_secs in times):
            error = next(error for _, error in measured[4 * index : 4 * index + 4] if error)
            log.warning("%s: timing it again beside its default failed, its records stay: %s", task.name, error)
            continue
        _commit(database, task, task.default, times[0] + times[3], target)
        _commit(database, task, trace, times[1] + times[2], target)
        re_timed.append(task.name)
    return re_timed


def _recorded_default_ms(database, task: TuningTask, trace) -> float | None:
    """The default schedule's recorded time (its latest, once ``tuning_records.keep_latest`` ran)."""
    workload = database.commit_workload(task.mod)
    wanted = _trace_key(trace)
    for record in database.get_top_k(workload, 1 << 20):
        if _trace_key(record.trace) == wanted:
            secs = record_seconds(record.run_secs)
            return None if secs is None else secs * 1e3
    return None


def design_space(target: TargetPreset):
    """MetaSchedule's own design space, and the default schedule's (``cpu_rules``) with its tile decisions free.

    The default schedule samples its tiles with their default decisions: the evolutionary search, which starts
    from the best records (the seeded defaults first), mutates them into neighbouring tiles of the same kernel,
    where MetaSchedule's own space alone rarely came near the defaults in a short budget.
    """
    from tvm.s_tir import meta_schedule as ms

    from edgetvm.kernels_schedules.cpu_rules import apply_default_schedule
    from edgetvm.pipeline.tile_climb import tile_neighbours

    _register_topi_rule_fallbacks()
    tvm_target = target.tvm_target()

    def defaults(sch):
        try:
            apply_default_schedule(sch, tvm_target)
        except Exception:  # a ScheduleError: no default for this function, MetaSchedule's own space only
            return []
        return [sch]

    return ms.space_generator.SpaceGeneratorUnion(
        [ms.space_generator.PostOrderApply(), ms.space_generator.ScheduleFn(defaults)],
        mutator_probs={**ms.Mutator.create("llvm"), tile_neighbours(): 1.0},
    )


# Rules TOPI's pooling names in its blocks' ``schedule_rule`` annotation. MetaSchedule has none of them for CPU
# targets: it logged a warning of three lines for every pooling task, removed the annotation and went on with its
# default rules. The fallbacks registered under those names do just that, without the warning.
TOPI_CUSTOM_RULES = ("meta_schedule.pool_max", "meta_schedule.pool_avg")


def _register_topi_rule_fallbacks() -> None:
    import tvm

    def fallback(sch, block):
        sch.unannotate(block, "schedule_rule")
        return [sch]

    for rule in TOPI_CUSTOM_RULES:
        name = f"s_tir.meta_schedule.cpu.{rule}"  # the name ApplyCustomRule looks up for the "cpu" target key
        if tvm.get_global_func(name, allow_missing=True) is None:
            tvm.register_global_func(name, fallback)


def search_strategy(options: TuneOptions):
    """MetaSchedule's evolutionary search of one task with ``options.population`` (at most 16 initial samples)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.search_strategy.EvolutionarySearch(
        population_size=options.population, genetic_num_iters=2, init_min_unmeasured=min(16, options.population)
    )


def local_builder(target: TargetPreset, workers: int) -> tuple[Any, tempfile.TemporaryDirectory]:
    """A MetaSchedule builder that compiles candidates here (cross-compiled for a board target), and the
    directory it exports them into.

    MetaSchedule's own export puts each candidate in a fresh ``tempfile.mkdtemp()`` that nothing removes: a
    128-trial tune left hundreds of directories in /tmp. Ours go under one directory per builder, removed with
    it.
    """
    import functools

    from tvm.s_tir import meta_schedule as ms

    target.check_toolchain()
    scratch = tempfile.TemporaryDirectory(prefix="edgetvm-candidates-")
    export = functools.partial(_export_candidate, target.cross_compiler, scratch.name)
    builder = ms.builder.LocalBuilder(max_workers=workers, timeout_sec=BUILD_TIMEOUT_S, f_build=_build, f_export=export)
    return builder, scratch


def measurer_here(target: TargetPreset, runner, workers: int) -> Measurer:
    """A ``Measurer`` whose candidates ``local_builder`` compiles here, ``workers`` at once, and ``runner`` times."""
    builder, scratch = local_builder(target, workers)
    return Measurer(builder, runner, workers=workers, scratch=scratch)


def _build(mod, target, _params):
    """MetaSchedule's default build without ``import tvm.s_tir.tensor_intrin``, with a compile's passes over
    scheduled kernels (``kernels_schedules.kernel_passes``: a candidate is timed as a compile builds it).

    The default imports every tensor intrinsic (mostly CUDA's) in each new builder worker, 35-45 s on a small
    machine: longer than the build timeout, which then fails every candidate. Candidates arrive scheduled, so
    the intrinsics' registry is not needed to build them.
    """
    import tvm
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from edgetvm.kernels_schedules.kernel_passes import kernel_passes
    from edgetvm.kernels_schedules.vectorizable_intrinsics import register

    register()  # a candidate's quantizing epilogue vectorizes as it does in a compile
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    mod = tvm.transform.Sequential(kernel_passes())(mod)
    return tvm_build(mod, target=target)


def _export_candidate(cross_compiler: str | None, scratch: str, rt_mod) -> str:
    """Write a built candidate under ``scratch``: a tar of objects for this machine (as MetaSchedule's own
    export), a shared library linked by the cross compiler for a board."""
    import os

    from tvm.support import cc, tar

    directory = tempfile.mkdtemp(dir=scratch)
    if cross_compiler is None:
        path = os.path.join(directory, "candidate." + tar.tar.output_format)
        rt_mod.export_library(path, fcompile=tar.tar)
    else:
        path = os.path.join(directory, "candidate.so")
        rt_mod.export_library(path, fcompile=cc.cross_compiler(cross_compiler))
    return path


def local_measurer(target: TargetPreset) -> Measurer:
    """Build and time candidates on this machine (x86 targets), with the target's threads."""
    import functools
    import os

    from tvm.s_tir import meta_schedule as ms

    from edgetvm.pipeline.runtime_threads import set_process_threads

    if not target.is_host:
        raise InputError(
            f"target {target.name} does not run here: tune it on a board (--board NAME, or --rpc-tracker/--rpc-key)"
        )
    workers = max(1, os.cpu_count() or 1)
    runner = ms.runner.LocalRunner(
        evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40, enable_cpu_cache_flush=False),
        timeout_sec=30.0,
        # Left unset, a worker's TVM pool has half of the hardware threads on x86 (1 on a two-core host, where
        # models run on 2): timed that way, a serial candidate beat a parallel default (PP-OCR's 88->16 1x1 conv,
        # 16 against 18 us) and ran 2.3x slower than it in the model (14 against 6 us).
        initializer=functools.partial(set_process_threads, target.threads),
    )
    return measurer_here(target, runner, workers)


def tune_model(
    imported: ImportedModel,
    target: TargetPreset,
    options: TuneOptions,
    measurer: Measurer,
    progress: Progress | None = None,
) -> TuningReport:
    """Tune ``imported`` (quantized already, if it is to be) for ``target``; records go to ``options.db``.

    Raises
    ------
    BuildError
        When every candidate of the run failed (nothing was learnt), or MetaSchedule itself fails.
    """
    from tvm.s_tir import meta_schedule as ms

    from edgetvm.pipeline.tune_progress import TuneProgress

    started = time.monotonic()
    tasks = tuning_tasks(imported, target)
    if not tasks:
        raise InputError(f"{imported.path}: no functions to tune (every one is scheduled already)")
    database = open_database(options.db, target, create=True)
    defaults = seed_defaults(database, tasks, target, measurer, progress)
    if all(ms_ is None for ms_, _ in defaults.values()):
        errors = {err for _, err in defaults.values() if err}
        raise BuildError(f"no default schedule of {imported.path} could be measured: {sorted(errors)[0]}")
    tracker = TuneProgress([t.name for t in tasks], [t.weight for t in tasks], options.trials, started, progress)
    for task in tasks:
        tracker.best_ms[task.name] = _best_ms(database, task)
    tvm_target = target.tvm_target()
    contexts = [
        ms.TuneContext(
            mod=task.mod,
            target=tvm_target,
            space_generator=design_space(target),
            search_strategy=search_strategy(options),
            task_name=task.name,
            rand_state=-1 if options.seed is None else options.seed + i,
            num_threads=measurer.workers,
        ).clone()
        for i, task in enumerate(tasks)
    ]
    # MetaSchedule's own rules refuse some functions (a conv whose epilogue reads a channel-padded residual:
    # "requires all the producer(s) ... under the target loop"), and tune_tasks then aborts the whole run. Such a
    # task keeps its default schedule, with the reason in the report.
    searchable = []
    for task, context in zip(tasks, contexts, strict=True):
        try:
            context.generate_design_space()
        except Exception as err:  # a ScheduleError / TVMError from a schedule rule
            tracker.errors[task.name] = f"MetaSchedule has no design space for it: {last_line(err)}"
            log.info("%s: %s", task.name, tracker.errors[task.name])
            continue
        searchable.append((task, context))
    if not searchable:
        raise BuildError(f"MetaSchedule has no design space for any function of {imported.path}")
    searchable, colder = hottest_first(searchable, tracker.best_ms, options)
    log.info("searching the %d hottest of %d functions (%d trials)", len(searchable), len(tasks), options.trials)
    work_dir = target_db_dir(options.db, target)
    # The default schedules' neighbouring tiles first (hottest function first, up to half the budget), then
    # MetaSchedule's search in whole batches; what is left of the budget below a batch climbs on.
    by_heat = sorted(tasks, key=lambda task: -(tracker.best_ms.get(task.name) or 0.0) * task.weight)
    climbed = climb_hottest(database, by_heat, tvm_target, measurer, tracker, options, options.trials // 2)
    remaining = options.trials - climbed
    per_iter = min(options.batch, remaining)
    searched = remaining // per_iter * per_iter if per_iter else 0
    try:
        if searched:
            ms.tune_tasks(
                tasks=[context for _, context in searchable],
                task_weights=[float(task.weight) for task, _ in searchable],
                work_dir=str(work_dir),
                max_trials_global=searched,
                num_trials_per_iter=per_iter,
                builder=measurer.builder,
                runner=measurer.runner,
                database=database,
                measure_callbacks=[
                    *ms.MeasureCallback.create("default"),
                    tracker.callback([t.name for t, _ in searchable]),
                ],
                cost_model=ms.CostModel.create("xgb", num_tuning_cores=measurer.workers),
            )
    except Exception as err:  # MetaSchedule raises TVMError / ValueError from its C++ scheduler
        raise BuildError(f"tuning {imported.path} for {target.name} failed in MetaSchedule: {last_line(err)}") from err
    if options.trials > tracker.total:
        climb_hottest(database, by_heat, tvm_target, measurer, tracker, options, options.trials - tracker.total)
    database, confirmation = confirm_winners(work_dir, tasks, tvm_target, measurer, progress)
    for task, _ in colder:
        if not tracker.trials.get(task.name):
            tracker.errors[task.name] = f"{NOT_SEARCHED}: the trial budget went to hotter functions (raise --trials)"
    results = [
        TaskResult(
            task.name,
            task.weight,
            task.rule,
            (task.default and _recorded_default_ms(database, task, task.default)) or defaults[task.name][0],
            _best_ms(database, task),
            tracker.trials.get(task.name, 0),
            tracker.failures.get(task.name, 0),
            tracker.errors.get(task.name) or defaults[task.name][1],
        )
        for task in tasks
    ]
    wall_s = time.monotonic() - started
    report = TuningReport(
        str(work_dir),
        target.name,
        tracker.total,
        wall_s,
        results,
        tracker.history,
        options.population,
        options.batch,
        confirmation,
    )
    _write_report(work_dir, report)
    if tracker.total and tracker.total == sum(tracker.failures.values()):
        raise BuildError(
            f"every one of the {tracker.total} candidates failed (last: {tracker.last_error}); the records in "
            f"{work_dir} say why each did: the default schedules stay in use"
        )
    return report


def hottest_first(searchable: list, best_ms: dict[str, float | None], options: TuneOptions) -> tuple[list, list]:
    """``(searched, left)``: the ``(task, context)`` pairs the budget can search, hottest first, and the rest.

    A task's heat is its best time so far (the default's on a first run) times its calls per inference, so a
    second run moves on to what the first left hottest. MetaSchedule's scheduler starts with one batch for each
    task in the order given: with sixty tasks, 64 trials reached only the first four, whichever they were. The
    budget now goes to the hottest tasks, ``MIN_BATCHES_PER_TASK`` batches each at least.
    """
    reach = max(1, options.trials // (MIN_BATCHES_PER_TASK * options.batch))
    ranked = sorted(searchable, key=lambda pair: -(best_ms.get(pair[0].name) or 0.0) * pair[0].weight)
    return ranked[:reach], ranked[reach:]


def _write_report(work_dir: Path, report: TuningReport) -> None:
    write_text_atomic(work_dir / REPORT, json.dumps(report.to_json(), indent=2) + "\n")
