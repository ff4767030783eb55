"""The benchmark suite: every suite model through ``edgetvm bench``, tables printed and collected.

``make bench`` runs it on this host (``.venv/bin/python bench/suite.py [--repeat N] [--models a,b]``). Each model's
report goes to ``bench/results/<model>/`` (bench.json, bench.md, bench.png, the builds and baseline models), and all
tables to ``bench/results/summary.md``. A suite model that this edgetvm does not know (yet) is skipped with a note.

``make bench-board TARGET=rpi4 [BOARD=name]`` runs it on a board (``--target rpi4 [--board NAME]``; the emulated
board when none is configured) into ``bench/results-<target>/``: every variant, the baselines too, runs there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import kernels  # bench/kernels.py, beside this script

from edgetvm.cache import write_atomic, write_text_atomic
from edgetvm.errors import EdgeTVMError
from edgetvm.pipeline.bench import BenchOptions, BenchReport, run_bench
from edgetvm.pipeline.bench_report import markdown_report
from edgetvm.pipeline.bundled_models import BUNDLED, model_data
from edgetvm.pipeline.tensor_spec import parse_shape_option
from edgetvm.targets import resolve_target

SUITE = ("blazeface", "ppocr-cls", "mnist-cnn")
SCHEMES = ("none", "w8a8-static", "w8a8-dynamic")
CALIBRATION_SAMPLES = 16  # random ones, for the models that ship no data of their own
RESULTS = Path(__file__).resolve().parent / "results"


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def bench_model(name: str, args: argparse.Namespace) -> BenchReport:
    """Run the bench on one registry model into ``RESULTS/name``."""
    model = BUNDLED[name]
    shapes = parse_shape_option(list(model.input_shapes))
    db = None
    schemes = tuple(args.schemes.split(","))
    tuned = tuple(s for s in args.tune_schemes.split(",") if s in schemes) if args.tune_trials else ()
    data = model_data(name)
    needs_calibration = "w8a8-static" in schemes
    calib = calibration(name, shapes, data, args.results) if needs_calibration else None
    on_host = resolve_target(args.target).is_host  # board benches score no eval set
    for scheme in tuned:  # tune each (continuing earlier runs), then bench with their +tuned rows
        db = args.results / "tuning-db" / name
        _say(f"{name}: tuning {scheme}, {args.tune_trials} trials into {db}")
        report = tune(name, model.path(), shapes, scheme, calib, args.tune_trials, db)
        _say(f"{name}: {scheme}: " + report.summary().replace("\n", f"\nbench: {name}: {scheme}: "))
    options = BenchOptions(
        input_shapes=shapes,
        target=args.target,
        schemes=schemes,
        threads=args.threads,
        repeat=args.repeat,
        warmup=args.warmup,
        settle_ms=args.settle_ms,
        db=str(db) if db else None,
        tuned_schemes=tuned,
        calibration=calib,
        eval_set=str(data.eval_set) if data and on_host else None,
    )

    def progress(message: str) -> None:
        _say(f"{name}: {message}")

    if resolve_target(args.target).is_host:
        return run_bench(model.path(), args.results / name, options, progress)
    from edgetvm.deploy.board_bench import BoardBenchOptions, run_board_bench

    return run_board_bench(model.path(), args.results / name, options, BoardBenchOptions(args.board), progress)


def calibration(name: str, shapes, data, directory: Path):
    """What w8a8-static calibrates on: the model's own calibration set (the trained CNN's training images, the
    PP-OCR classifier's rendered text lines), else random inputs (BlazeFace ships no images: its static build is
    calibrated on noise, said in the README)."""
    import numpy as np

    from edgetvm.pipeline.calibrate import CalibrationOptions
    from edgetvm.pipeline.ingest import load_model
    from edgetvm.pipeline.inputs import random_inputs

    if data is not None:  # the model's ModelData
        return CalibrationOptions(data=data.calibration_set)
    specs = load_model(BUNDLED[name].path(), shapes).inputs
    samples = [random_inputs(specs, seed=1000 + i) for i in range(CALIBRATION_SAMPLES)]
    path = directory / f"{name}-calibration-random.npz"  # beside the model's report folder, which bench replaces
    stacked = {spec.name: np.stack([sample[spec.name] for sample in samples]) for spec in specs}
    write_atomic(path, lambda f: np.savez(f, **stacked))
    return CalibrationOptions(data=path)


def tune(name: str, path: Path, shapes, scheme_name: str, calib, trials: int, db: Path):
    """``edgetvm tune [--quantize SCHEME]`` of the model on this host into ``db``: a quantized model's functions
    (its int8 kernels) are other tasks than the float model's, in the same database."""
    from edgetvm.pipeline.calibrate import CalibrationOptions
    from edgetvm.pipeline.ingest import load_model
    from edgetvm.pipeline.quantize import prepare_for_target
    from edgetvm.pipeline.schemes import get_scheme
    from edgetvm.pipeline.tune import TuneOptions, local_measurer, tune_model

    target = resolve_target("x86")

    def progress(message: str) -> None:
        _say(f"{name}: {scheme_name}: {message}")

    scheme = get_scheme(scheme_name)
    calibration = (calib or CalibrationOptions()).for_scheme(scheme)
    imported, _, _ = prepare_for_target(load_model(path, shapes), scheme, target, calibration, progress)
    return tune_model(imported, target, TuneOptions(trials, db), local_measurer(target), progress)


def summary(reports: dict[str, BenchReport], notes: list[str]) -> str:
    """``summary.md``: every model's bench.md one after the other, headings one level down."""
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"# edgetvm benchmark suite, {date}", "", _where(reports), ""]
    parts += [f"- {note}" for note in notes]
    for name, report in reports.items():
        body = markdown_report(report).replace("# edgetvm bench: ", f"## {name}: ", 1)
        parts += ["", body]
    return "\n".join(parts).rstrip() + "\n"


def _where(reports: dict[str, BenchReport]) -> str:
    boards = {report.board["name"]: report.board for report in reports.values() if report.board}
    if not boards:
        return "Measured on this host (not an emulated board)."
    if any(board["emulated"] for board in boards.values()):
        return (
            "Measured on the EMULATED board (qemu-user on this host): every variant, the baselines too, ran under "
            "emulation. The timings prove nothing about a real board's speed, nor about which runtime is faster on one."
        )
    return "Measured on board " + ", ".join(boards) + " (real hardware)."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SUITE), help=f"comma-separated (default {','.join(SUITE)})")
    parser.add_argument("--schemes", default=",".join(SCHEMES), help=f"edgetvm schemes (default {','.join(SCHEMES)})")
    parser.add_argument("--threads", type=int, help="threads of every runtime (default: this host's cores)")
    parser.add_argument("--repeat", type=int, default=50, help="timed rounds per model (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first (default 5)")
    parser.add_argument(
        "--settle-ms",
        type=float,
        default=200.0,
        help="untimed runs of a variant before each timed one, so that the previous runtime's spinning threads "
        "have stopped (200; at 0, PP-OCR's edgetvm float took ~38 ms instead of ~0.27)",
    )
    parser.add_argument("--target", default="x86", help="x86 (this host, default) or a board target such as rpi4")
    parser.add_argument("--board", help="board name from the boards file, or 'emulated' (board targets)")
    parser.add_argument("--results", type=Path, help=f"output folder (default {RESULTS}, or {RESULTS}-TARGET)")
    parser.add_argument("--no-kernels", action="store_true", help="skip the per-operator table (bench/kernels.py)")
    parser.add_argument("--tune-trials", type=int, default=0, help="tune each model first (N trials), add +tuned rows")
    parser.add_argument(
        "--tune-schemes",
        default="none,w8a8-static",
        help="the schemes --tune-trials tunes, each with its own trials (default none,w8a8-static)",
    )
    args = parser.parse_args(argv)
    on_host = resolve_target(args.target).is_host
    args.results = args.results or (RESULTS if on_host else RESULTS.with_name(f"results-{args.target}"))
    reports: dict[str, BenchReport] = {}
    notes: list[str] = []
    failed = False
    for name in args.models.split(","):
        if name not in BUNDLED:
            notes.append(f"{name}: skipped, not in this edgetvm's model registry yet")
            _say(notes[-1])
            continue
        try:
            reports[name] = bench_model(name, args)
        except EdgeTVMError as err:
            notes.append(f"{name}: failed: {err}")
            _say(notes[-1])
            failed = True
            continue
        print(f"\n{markdown_report(reports[name])}", flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    text = summary(reports, notes)
    if not args.no_kernels and on_host:  # the per-operator table times this host's kernels
        _say("per-operator kernels")
        table = kernels.run(args.threads or resolve_target("x86").threads, 20, args.results)
        print(f"\n{table}", flush=True)
        text += "\n" + table.replace("## ", "## ", 1)
    path = args.results / "summary.md"
    write_text_atomic(path, text)
    print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
