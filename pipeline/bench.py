"""Bench: edgetvm builds against onnxruntime / tflite-runtime on this host, same inputs, same thread count.

``run_bench`` builds every variant (``bench_variants``), runs each once for accuracy against the float reference,
then times them in interleaved rounds (every variant once per round, the order rotated each round, so that
machine noise hits every variant alike), and writes ``bench.json``, ``bench.md`` and ``bench.png`` to the output
directory in one rename.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetvm.errors import InputError, last_line
from edgetvm.pipeline.bench_variants import Variant, baseline_calibration, baseline_variants, edgetvm_variants
from edgetvm.pipeline.compare import compare_outputs
from edgetvm.pipeline.eval_set import EvalSet, answers, load_eval_set, score
from edgetvm.pipeline.package import check_replaceable, staging_directory

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
REPORT = "bench.json"
_KIND = "a bench output directory"  # what InputError calls an -o it may replace
Progress = Callable[[str], None]


@dataclass(frozen=True)
class TimingPlan:
    """How variants are timed: untimed warm-up rounds, timed rounds, settle time before each timed run."""

    warmup: int = 3
    repeat: int = 30
    settle_ms: float = 0.0


@dataclass
class BenchOptions:
    """What ``edgetvm bench`` was asked to do (the model options are those of ``compile``)."""

    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    target: str = "x86"
    schemes: tuple[str, ...] = ("none",)
    threads: int | None = None
    repeat: int = 30
    warmup: int = 3
    settle_ms: float = 200.0
    inputs: str | None = None
    seed: int = 0
    eval_set: str | None = None  # an eval set (pipeline.eval_set): every variant's top-1 over many real inputs
    calibration: Any = None  # a pipeline.calibrate.CalibrationOptions for static schemes
    db: str | None = None  # a tuning database: each scheme also runs built with its records
    tuned_schemes: tuple[str, ...] | None = None  # ... only these schemes (None: every one)

    def __post_init__(self) -> None:
        if self.repeat < 1:
            raise InputError(f"--repeat must be at least 1, got {self.repeat}")
        if self.warmup < 0:
            raise InputError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.settle_ms < 0:
            raise InputError(f"--settle-ms must be 0 or more, got {self.settle_ms}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be at least 1, got {self.threads}")
        if not self.schemes or len(set(self.schemes)) != len(self.schemes):
            raise InputError(f"--schemes must name each scheme once, e.g. none,w8a8-dynamic; got {self.schemes}")

    def timing(self) -> TimingPlan:
        return TimingPlan(self.warmup, self.repeat, self.settle_ms)


@dataclass
class BenchRow:
    """One variant's line of the report."""

    runtime: str
    variant: str
    latency_ms: dict[str, float] | None = None
    accuracy: dict[str, Any] | None = None
    ratio_to_baseline: float | None = None
    gflops: float | None = None
    roofline_fraction: float | None = None
    samples_ms: list[float] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    eval: dict[str, Any] | None = None  # eval_set.score() on the bench's eval set

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.variant}"


@dataclass
class BenchReport:
    """Everything a bench run measured; ``bench.json`` is its ``to_json()``.

    ``host`` is the machine that built the variants; ``board``, for a board bench, the one that ran and timed
    them (with ``emulated`` true for the emulated board), else None.
    """

    model: dict[str, Any]
    target: str
    baseline: dict[str, str]
    host: dict[str, Any]
    timing: dict[str, Any]
    roofline: dict[str, Any]
    results: list[BenchRow]
    board: dict[str, Any] | None = None
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    @property
    def baseline_label(self) -> str:
        return f"{self.baseline['runtime']} {self.baseline['variant']}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["format_version"] = FORMAT_VERSION
        return data

    def save(self, directory: Path) -> None:
        (Path(directory) / REPORT).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> BenchReport:
        path = Path(directory) / REPORT
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"{path}: not a readable bench report ({err}); make one with 'edgetvm bench'") from err
        if data.pop("format_version", None) != FORMAT_VERSION:
            raise InputError(f"{path}: not a version {FORMAT_VERSION} bench report; rerun 'edgetvm bench'")
        data["results"] = [BenchRow(**row) for row in data["results"]]
        return cls(**data)


def interleaved_order(count: int, round_index: int) -> list[int]:
    """Indices of ``count`` variants in the order round ``round_index`` runs them: rotated by one each round.

    Over ``count`` consecutive rounds every variant runs once in every position (first, after each other one...).
    """
    return [(round_index + offset) % count for offset in range(count)]


@dataclass(frozen=True)
class RemoteTimer:
    """A variant timed where it runs (a board): ``time_once(settle_s)`` settles there, times one run by that
    machine's clock, and returns its seconds, so the host's clock never counts the round trip."""

    time_once: Callable[[float], float]


def time_interleaved(
    runs: dict[str, Callable[[], object] | RemoteTimer],
    plan: TimingPlan,
    clock: Callable[[], float] = time.perf_counter,
    progress: Progress | None = None,
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Time every callable once per round, ``plan.warmup`` untimed rounds then ``plan.repeat`` timed ones.

    With ``plan.settle_ms`` > 0, each timed run comes after untimed runs of the same callable for that long (at least
    one): onnxruntime's and TVM's idle worker threads keep spinning on a core for tens to hundreds of milliseconds
    after a run, which would otherwise be charged to whichever variant runs next.

    A ``RemoteTimer`` settles and times itself where it runs. ``progress`` hears of every round.

    Returns
    -------
    (milliseconds per run by name, error by name)
        A callable that raises is recorded in the errors and leaves the rotation; its samples are dropped.
    """
    samples: dict[str, list[float]] = {name: [] for name in runs}
    errors: dict[str, str] = {}
    rounds = plan.warmup + plan.repeat
    for round_index in range(rounds):
        if progress:
            kind = "warm-up round" if round_index < plan.warmup else "round"
            number = round_index + 1 if round_index < plan.warmup else round_index - plan.warmup + 1
            total = plan.warmup if round_index < plan.warmup else plan.repeat
            progress(f"timing {len(runs)} variants interleaved: {kind} {number}/{total}")
        active = [name for name in runs if name not in errors]
        for index in interleaved_order(len(active), round_index):
            name = active[index]
            run = runs[name]
            try:
                if isinstance(run, RemoteTimer):
                    elapsed = run.time_once(plan.settle_ms / 1e3)
                else:
                    _settle(run, plan.settle_ms / 1e3, clock)
                    start = clock()
                    run()
                    elapsed = clock() - start
            except Exception as err:  # a runtime failing mid-run: its row says so, the others go on
                errors[name] = f"failed while timing: {type(err).__name__}: {last_line(err)}"
                continue
            if round_index >= plan.warmup:
                samples[name].append(elapsed * 1e3)
    return {name: values for name, values in samples.items() if name not in errors}, errors


def _settle(run: Callable[[], object], seconds: float, clock: Callable[[], float]) -> None:
    if seconds <= 0:
        return
    until = clock() + seconds
    run()
    while clock() < until:
        run()


def latency_stats(samples_ms: list[float]) -> dict[str, float]:
    """median, p90, p99, mean, std, min (milliseconds) and n of the timed runs (``deploy`` reports the same)."""
    data = np.asarray(samples_ms, dtype=np.float64)
    return {
        "median": float(np.median(data)),
        "p90": float(np.percentile(data, 90)),
        "p99": float(np.percentile(data, 99)),
        "mean": float(data.mean()),
        "std": float(data.std(ddof=1)) if data.size > 1 else 0.0,
        "min": float(data.min()),
        "n": int(data.size),
    }


def accuracy_summary(reference: str, names: list[str], actual: list[np.ndarray], expected: list[np.ndarray]) -> dict:
    """``compare`` metrics of every output plus the worst of each over outputs (what the table shows)."""
    outputs = compare_outputs(names, actual, expected)
    top1 = [out.top1_agreement for out in outputs if out.top1_agreement is not None]
    return {
        "reference": reference,
        "min_cosine": min(out.cosine for out in outputs),
        "max_abs_error": max(out.max_abs_error for out in outputs),
        "top1_agreement": min(top1) if top1 else None,
        "outputs": [out.to_json() for out in outputs],
    }


def measure_variants(
    variants: list[Variant],
    inputs: dict[str, np.ndarray],
    output_names: list[str],
    timing: TimingPlan,
    progress: Progress | None = None,
    reference: Variant | None = None,
    eval_set: EvalSet | None = None,
) -> list[BenchRow]:
    """Accuracy of every variant against the float reference, then interleaved timing.

    The reference is ``reference`` when given (run for its outputs only, not timed: the host's float run of a
    board bench), else the first variant. With ``eval_set``, every variant also answers each of its samples
    (``BenchRow.eval``). Rows come back in the variants' order; a variant that fails (here or before) has a row
    with its ``error``.
    """
    rows = [BenchRow(v.runtime, v.variant, details=dict(v.details), error=v.error) for v in variants]
    reference = reference or _reference(variants)
    expected = reference.run(inputs)
    if eval_set is not None:
        if progress:
            progress(f"{reference.label}: answering the {len(eval_set)} samples of the eval set")
        reference_answers = answers(reference.run, eval_set)
    runs: dict[str, Callable[[], object] | RemoteTimer] = {}
    for variant, row in zip(variants, rows, strict=True):
        if row.error is not None:
            continue
        try:
            actual = variant.run(inputs)
            row.accuracy = accuracy_summary(reference.label, output_names, actual, expected)
        except Exception as err:  # a baseline's runtime rejects the model at run time, or gives other shapes
            row.error = f"failed on the first run: {type(err).__name__}: {last_line(err)}"
            continue
        if eval_set is not None:
            if progress and variant is not reference:
                progress(f"{row.label}: answering the {len(eval_set)} samples of the eval set")
            try:
                predicted = reference_answers if variant is reference else answers(variant.run, eval_set)
                row.eval = score(predicted, eval_set, reference_answers, reference.label)
            except InputError:
                raise  # the eval set does not fit the model: every row would fail alike
            except Exception as err:
                row.error = f"failed on the eval set: {type(err).__name__}: {last_line(err)}"
                continue
        if variant.time_remote is not None:
            runs[row.label] = RemoteTimer(variant.time_remote)
        else:
            runs[row.label] = lambda run=variant.run: run(inputs)
    samples, errors = time_interleaved(runs, timing, progress=progress)
    for row in rows:
        if row.label in errors:
            row.error = errors[row.label]
        elif row.label in samples:
            row.samples_ms = samples[row.label]
            row.latency_ms = latency_stats(row.samples_ms)
    return rows


def _reference(variants: list[Variant]) -> Variant:
    """The first variant, the float reference every other one is compared with; it must have been built."""
    if variants[0].error is not None:
        raise InputError(f"the reference run ({variants[0].label}) cannot run the model: {variants[0].error}")
    return variants[0]


def add_ratios(rows: list[BenchRow], flops: int, sgemm_gflops: float | None) -> None:
    """Median over the baseline's (the first row's) median, and achieved GFLOP/s against the sgemm roof."""
    baseline = rows[0].latency_ms
    for row in rows:
        if row.latency_ms is None:
            continue
        seconds = row.latency_ms["median"] / 1e3
        row.ratio_to_baseline = row.latency_ms["median"] / baseline["median"] if baseline else None
        row.gflops = flops / seconds / 1e9 if flops and seconds > 0 else None
        if row.gflops is not None and sgemm_gflops:
            row.roofline_fraction = row.gflops / sgemm_gflops


def run_bench(
    model: str | Path, out_dir: str | Path, options: BenchOptions, progress: Progress | None = None
) -> BenchReport:
    """Build, run and time every variant of ``model`` on this host; write the report to ``out_dir``.

    Raises
    ------
    InputError
        For a board target (``deploy.board_bench`` runs those), a bad model, scheme, inputs file or output directory.
    """
    from edgetvm.pipeline.ingest import load_model
    from edgetvm.pipeline.inputs import load_inputs
    from edgetvm.pipeline.schemes import get_scheme
    from edgetvm.targets import resolve_target

    target = resolve_target(options.target)
    if not target.is_host:
        raise InputError(
            f"bench --target {target.name} is a board target: its bench runs on the board "
            f"(edgetvm.deploy.board_bench.run_board_bench, what 'edgetvm bench --target {target.name}' calls)"
        )
    out_dir = Path(out_dir)
    check_replaceable(out_dir, REPORT, _KIND)  # before minutes of building, not after
    schemes = [get_scheme(name) for name in options.schemes]
    threads = options.threads or target.threads
    if progress:
        progress(f"importing {model}")
    imported = load_model(model, options.input_shapes)
    inputs = load_inputs(options.inputs, imported.inputs, options.seed)
    eval_set = load_eval_set(options.eval_set, imported.inputs) if options.eval_set else None
    with staging_directory(out_dir, REPORT, _KIND) as staging:
        calibration = baseline_calibration(options.calibration, imported.inputs, inputs)
        variants = baseline_variants(
            imported.path, imported.format, threads, calibration, staging / "baselines", progress
        )
        _reference(variants)  # before spending minutes on builds
        variants += edgetvm_variants(
            imported,
            target,
            schemes,
            staging / "builds",
            progress,
            calibration=options.calibration,
            db=options.db,
            tuned_schemes=options.tuned_schemes,
        )
        rows, tvm_threads = _measure_in_new_pool(variants, inputs, eval_set, imported, threads, options, progress)
        report = _report(imported, target, options, rows, threads, tvm_threads, progress)
        report.save(staging)
        _render(report, staging)
    return report


def _measure_in_new_pool(variants, inputs, eval_set, imported, threads: int, options: BenchOptions, progress):
    """Measure in a new thread whose TVM thread pool has ``threads`` workers (see ``runtime_threads``)."""
    from edgetvm.pipeline.runtime_threads import call_with_tvm_threads

    names = [spec.name for spec in imported.outputs]
    rows, tvm_threads = call_with_tvm_threads(
        lambda: measure_variants(variants, inputs, names, options.timing(), progress, eval_set=eval_set),
        threads,
        name="edgetvm-bench",
    )
    if tvm_threads != threads:
        log.warning("TVM ran with %d threads, not the %d asked for", tvm_threads, threads)
    return rows, tvm_threads


def _report(imported, target, options: BenchOptions, rows, threads: int, tvm_threads: int, progress) -> BenchReport:
    from edgetvm.pipeline.host_facts import host_facts
    from edgetvm.pipeline.roofline import measure_sgemm, model_flops

    flops = model_flops(imported.mod)
    if progress:
        progress(f"measuring numpy's sgemm on {threads} threads (the roofline)")
    sgemm = measure_sgemm(threads)
    add_ratios(rows, flops, sgemm.gflops)
    return BenchReport(
        model=model_facts(imported, flops),
        target=target.name,
        baseline={"runtime": rows[0].runtime, "variant": rows[0].variant},
        host=host_facts(threads, tvm_threads),
        timing={
            "warmup_rounds": options.warmup,
            "rounds": options.repeat,
            "order": "interleaved: every variant once per round, the order rotated by one each round",
            "settle_ms": options.settle_ms,
            "settle": "before each timed run, untimed runs of the same variant for settle_ms (at least one), so "
            "that the previous variant's spinning idle threads (onnxruntime, TVM) are not charged to it",
            "clock": "time.perf_counter around one inference call, inputs already in memory",
            "inputs": options.inputs or f"random, seed {options.seed}",
            "eval_set": options.eval_set,
        },
        roofline={**sgemm.to_json(), "model_flops": flops},
        results=rows,
    )


def _render(report: BenchReport, directory: Path) -> None:
    from edgetvm.pipeline.bench_report import markdown_report, plot_report

    (directory / "bench.md").write_text(markdown_report(report))
    plot_report(report, directory / "bench.png")


def model_facts(imported, flops: int) -> dict[str, Any]:
    """A bench report's ``model``: the file, its inputs and outputs, and the FLOPs the ratios count."""
    return {
        "path": str(imported.path.resolve()),
        "sha256": imported.sha256,
        "format": imported.format,
        "input_shapes": {name: list(shape) for name, shape in imported.input_shapes.items()},
        "inputs": [spec.to_json() for spec in imported.inputs],
        "outputs": [spec.to_json() for spec in imported.outputs],
        "flops": flops,
        "flops_counted": "2 x multiply-accumulates of conv/matmul in the imported Relax module",
    }
