"""The ``edgetvm`` command line: parse, validate, call the typed API, print.

Exit codes are fixed per error kind; see ``edgetvm.errors``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from edgetvm import __version__
from edgetvm.cache import write_atomic, write_text_atomic
from edgetvm.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EdgeTVMError, InputError

log = logging.getLogger("edgetvm")


def _cmd_targets(args: argparse.Namespace) -> int:
    from edgetvm.targets import list_presets

    for preset in list_presets():
        board = "emulated board available" if preset.emulated_board else ("runs here" if preset.is_host else "board")
        print(f"{preset.name:<8} {preset.description}  [{board}]")
    return 0


def _cmd_compile(args: argparse.Namespace) -> int:
    from edgetvm.pipeline.build import build_package
    from edgetvm.pipeline.calibrate import prepare_calibration, quantization_manifest, ranges_files
    from edgetvm.pipeline.ingest import load_model
    from edgetvm.pipeline.quantize import quantize, scheme_for_target
    from edgetvm.pipeline.tensor_spec import parse_shape_option
    from edgetvm.targets import resolve_target

    target = resolve_target(args.target)
    target.check_toolchain()
    budget = _budget(args)
    scheme = scheme_for_target(_chosen_scheme(args), target)
    # With --quantize, the accuracy budget drives mixed precision, measured on host builds for any target.
    mixed = budget.max_accuracy_drop is not None and not scheme.is_float
    if not budget.empty and not (mixed and budget.max_latency_ms is None and budget.max_regression is None):
        from edgetvm.pipeline.gates import require_host

        require_host(target)
    shapes = parse_shape_option(args.input_shape)
    with _progress(args, f"importing {args.model}"):
        imported = load_model(args.model, shapes)
    with _progress(args, "calibrating") as progress:
        scheme, ranges = prepare_calibration(imported, scheme, _calibration_options(args), progress.update)
    quantization, search, samples = quantization_manifest(scheme, ranges, target.int8_depthwise), None, None
    if mixed:
        search, samples = _search_mixed_precision(args, imported, scheme, budget.max_accuracy_drop, ranges, target)
        quantization = {**quantization, "keep_float": list(search.keep_float), "mixed_precision": search.to_json()}
    if not scheme.is_float:
        with _progress(args, f"quantizing with {scheme.name}"):
            keep_float = frozenset(search.keep_float if search else ())
            imported = quantize(
                imported, scheme, keep_float=keep_float, calibration=ranges, int8_depthwise=target.int8_depthwise
            )
    with _progress(args, f"compiling for {target.name}"):
        package = build_package(imported, target, args.output, quantization, ranges_files(ranges), db=args.db)
    print(f"wrote {package.directory} ({target.name}, {package.manifest['library']['machine']})")
    if imported.quantization:
        q = imported.quantization
        print(f"quantized model ({q['source']}): {q['integer_layers']} integer layer(s), {q['float_layers']} float")
    if package.manifest.get("tuning"):
        tuning = package.manifest["tuning"]
        untuned = len(tuning["tasks_untuned"])
        print(
            f"tuning database {tuning['db']}: {tuning['records_used']} functions tuned, {untuned} with no record "
            "(default schedules)"
        )
    schedules = package.manifest["schedules"]
    rules = ", ".join(f"{rule} {count}" for rule, count in schedules["rules"].items() if rule != "naive")
    naive = ", ".join(schedules["naive"]) or "none"
    print(f"default schedules: {rules}; naive (TVM's untouched loops): {naive}")
    if not budget.empty:
        with _progress(args, "measuring the build against its budgets"):
            measurement = _compile_measurement(args, package, scheme, search, samples)
        _enforce(args, budget, [measurement])
    return 0


def _search_mixed_precision(args: argparse.Namespace, imported, scheme, max_drop: float, ranges, target):
    """Mixed precision: the layers to keep in float for ``--max-accuracy-drop`` (BudgetError if none can)."""
    import functools

    from edgetvm.pipeline.layer_accuracy import LayerProbe, load_samples
    from edgetvm.pipeline.mixed_precision import search_keep_float
    from edgetvm.pipeline.quantize import quantize

    samples = load_samples(args.inputs, imported.inputs, args.seed, args.samples)
    with _progress(args, "mixed precision: building the float model for this host") as progress:
        search = search_keep_float(
            LayerProbe(
                imported,
                scheme,
                samples,
                quantizer=functools.partial(quantize, calibration=ranges, int8_depthwise=target.int8_depthwise),
            ),
            max_drop,
            progress.update,
        )
    kept = ", ".join(search.keep_float) or "none"
    print(
        f"mixed precision: {len(search.keep_float)} of {len(search.report.layers)} layers kept in float ({kept}): "
        f"accuracy drop {search.accuracy_drop:.3f} points (budget {max_drop:g}, float build "
        f"{search.float_accuracy_drop:.3f}; {len(samples)} sample(s), measured on this host)"
    )
    return search, samples


def _compile_measurement(args: argparse.Namespace, package, scheme, search, samples):
    """What compile's gates check: the artifact run here, or after mixed precision the search's last build (the
    same quantized module built for this host) plus, for host builds with latency budgets, the artifact's timing."""
    from edgetvm.pipeline.gates import Measurement, measure_host_build
    from edgetvm.pipeline.inputs import load_inputs

    if search is None:
        return measure_host_build(package, load_inputs(args.inputs, package.inputs, args.seed))
    latency = None
    if args.max_latency_ms is not None or args.max_regression is not None:
        latency = measure_host_build(package, samples[0]).latency_ms
    accuracy = [o.to_json() for o in search.report.outputs]
    return Measurement(f"compile {package.directory.name}", f"edgetvm:{scheme.name}", latency, accuracy)


def _cmd_schemes(args: argparse.Namespace) -> int:
    from edgetvm.pipeline.schemes import list_schemes

    for scheme in list_schemes():
        print(f"{scheme.name:<14} {scheme.description}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from edgetvm.pipeline.inputs import load_inputs
    from edgetvm.pipeline.package import Package
    from edgetvm.pipeline.run_local import LocalRunner

    package = Package.load(args.artifact)
    inputs = load_inputs(args.inputs, package.inputs, seed=args.seed)
    outputs = LocalRunner(package).run(inputs)
    _atomic_savez(Path(args.output), outputs)
    print(f"wrote {args.output}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in outputs.items()))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from edgetvm.pipeline.compare import compare_package
    from edgetvm.pipeline.inputs import load_inputs
    from edgetvm.pipeline.package import Package

    package = Package.load(args.artifact)
    if args.per_layer or args.plot:
        return _compare_per_layer(args, package)
    inputs = load_inputs(args.inputs, package.inputs, seed=args.seed)
    result = compare_package(package, inputs, args.reference)
    for out in result.outputs:
        print(_agreement_line(out))
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(result.to_json(), indent=2) + "\n")
    return 0


def _agreement_line(out) -> str:
    top1 = "n/a" if out.top1_agreement is None else f"{out.top1_agreement:.1%}"
    return f"{out.name}: max abs err {out.max_abs_error:.3g}, cosine {out.cosine:.6f}, top-1 agreement {top1}"


def _compare_per_layer(args: argparse.Namespace, package) -> int:
    from edgetvm.pipeline.layer_accuracy import layer_report_for_package, load_samples, write_sqnr_chart

    samples = load_samples(args.inputs, package.inputs, args.seed, args.samples)
    with _progress(args, "per-layer accuracy: building the float and the quantized model for this host"):
        report = layer_report_for_package(package, samples, args.reference)
    kept = f", kept in float: {', '.join(report.keep_float)}" if report.keep_float else ""
    print(f"{report.scheme}, {report.samples} sample(s), against {report.reference_runtime}{kept}")
    for out in report.outputs:
        print(_agreement_line(out))
    print(f"accuracy drop {report.accuracy_drop:.3f} points (float build {report.float_accuracy_drop:.3f})")
    print("layer         weight            SQNR dB   input dB   added noise")
    for layer in report.layers:
        shape = "x".join(str(d) for d in layer.weight_shape)
        mark = "  (float)" if layer.kept_float else ""
        print(
            f"{layer.key:<13} {shape:<17} {layer.sqnr_db:>7.2f}   {layer.input_sqnr_db:>8.2f}   "
            f"{layer.added_noise:>11.2e}{mark}"
        )
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(report.to_json(), indent=2) + "\n")
    if args.plot:
        write_sqnr_chart(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from edgetvm.pipeline.bench import BenchOptions, run_bench
    from edgetvm.pipeline.bench_report import runner_facts, table_rows, threads_text
    from edgetvm.pipeline.tensor_spec import parse_shape_option

    budget = _budget(args)
    options = BenchOptions(
        input_shapes=parse_shape_option(args.input_shape),
        target=args.target,
        schemes=tuple(name.strip() for name in args.schemes.split(",") if name.strip()),
        threads=args.threads,
        repeat=args.repeat,
        warmup=args.warmup,
        settle_ms=args.settle_ms,
        inputs=args.inputs,
        seed=args.seed,
        eval_set=args.eval_set,
        calibration=_calibration_options(args),
        db=args.db,
    )
    with _progress(args, f"benchmarking {args.model}") as progress:
        if _bench_on_board(args):
            from edgetvm.deploy.board_bench import BoardBenchOptions, run_board_bench

            board = BoardBenchOptions(args.board, args.boards, args.trust_new_host)
            report = run_board_bench(args.model, args.output, options, board, progress.update)
        else:
            report = run_bench(args.model, args.output, options, progress.update)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        threads = threads_text(runner_facts(report)["threads"])
        where = f"on board {report.board['name']}" if report.board else "on this host"
        print("\n".join(table_rows(report)))
        print(f"wrote {args.output}: bench.json, bench.md, bench.png ({threads} {where})")
    if not budget.empty:
        from edgetvm.pipeline.gates import bench_measurements

        _enforce(args, budget, bench_measurements(report.to_json()))
    return 0


def _bench_on_board(args: argparse.Namespace) -> bool:
    """Whether ``bench`` runs on a board (any target but this host's); ``--board`` needs a board target."""
    from edgetvm.targets import resolve_target

    on_board = not resolve_target(args.target).is_host
    if args.board and not on_board:
        raise InputError(f"bench --board {args.board}: --target {args.target} runs on this host; give a board target")
    return on_board


def _atomic_savez(path: Path, arrays: dict) -> None:
    import numpy as np

    write_atomic(path, lambda f: np.savez(f, **arrays))


class _progress:
    """A rich progress line for a step on a terminal: spinner, message, a bar (filled when the message counts
    ``k/N``, pulsing otherwise) and the time elapsed; plain lines on stderr otherwise; nothing with --quiet."""

    def __init__(self, args: argparse.Namespace, message: str):
        self.quiet = getattr(args, "quiet", False)
        self.enabled = not self.quiet and sys.stdout.isatty()
        self.message = message
        self._bar = None
        self._task = None

    def update(self, message: str) -> None:
        if self._bar is not None:
            done, total = _count_in(message)
            self._bar.update(self._task, description=message, completed=done, total=total)
        elif not self.quiet:  # a log file or CI: one plain line per step
            print(f"edgetvm: {message}", file=sys.stderr, flush=True)

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=20), TimeElapsedColumn())
            self._bar = Progress(*columns, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.message, total=None)
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False


def _count_in(message: str) -> tuple[int, int | None]:
    """``(k - 1, N)`` for a message counting ``k/N`` (step k is under way), else ``(0, None)``: a pulsing bar."""
    import re

    counts = re.findall(r"\b(\d+)/(\d+)\b", message)
    if not counts or int(counts[-1][1]) == 0:
        return 0, None
    done, total = (int(value) for value in counts[-1])
    return min(done - 1, total), total


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an .onnx or .tflite file")
    parser.add_argument(
        "--input-shape",
        action="append",
        metavar="NAME=DIMS",
        help="fix an input's shape, e.g. x=1x3x224x224 (repeatable)",
    )


def _add_inputs_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inputs", help=".npz with one array per model input (default: random, fixed seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")


def _add_gate_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("budgets (exit 5 when one is broken)")
    group.add_argument(
        "--max-accuracy-drop",
        type=float,
        metavar="POINTS",
        help="worst output's drop against the float reference, in percentage points of top-1 agreement (or of "
        "cosine for outputs without classes)",
    )
    group.add_argument("--max-latency-ms", type=float, metavar="MS", help="median latency budget")
    group.add_argument("--baseline-report", type=Path, help="an earlier report.json / bench.json to compare with")
    group.add_argument("--max-regression", metavar="PCT", help="median latency growth over the baseline, e.g. 10%%")
    group.add_argument("--junit", type=Path, metavar="FILE", help="write every gate as a JUnit XML test case")


def _add_scheme_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quantize", default="none", metavar="SCHEME", help="quantization scheme (default none)")
    group = parser.add_argument_group("granularity (default: the scheme's)")
    group.add_argument(
        "--weight-granularity",
        metavar="G",
        help="per-channel (one weight scale per output channel) or per-tensor (one per layer)",
    )
    group.add_argument(
        "--activation-granularity",
        metavar="G",
        help="per-tensor (one activation scale per layer input) or, for dynamic schemes, per-row (one per row of "
        "each matmul's input; convs keep per-tensor)",
    )


def _chosen_scheme(args: argparse.Namespace):
    from edgetvm.pipeline.schemes import get_scheme, with_granularity

    return with_granularity(get_scheme(args.quantize), args.weight_granularity, args.activation_granularity)


def _add_calibration_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("calibration (static schemes: w8a8-static)")
    group.add_argument(
        "--calib",
        metavar="DATA",
        help=".npz (or a directory of .npz files) with one array per model input, one sample or a batch [N, ...]",
    )
    group.add_argument("--calib-method", metavar="METHOD", help="minmax, percentile or entropy (default: the scheme's)")
    group.add_argument(
        "--calib-percentile", type=float, metavar="P", help="the percentile of |x| to keep (default 99.99)"
    )
    group.add_argument(
        "--calib-ranges",
        metavar="FILE",
        help="calibration.json of an earlier build of the same model, instead of --calib",
    )


def _calibration_options(args: argparse.Namespace):
    from edgetvm.pipeline.calibrate import CalibrationOptions

    return CalibrationOptions(args.calib, args.calib_method, args.calib_percentile, args.calib_ranges)


def _add_samples_option(parser, what: str) -> None:
    parser.add_argument(
        "--samples",
        type=int,
        metavar="N",
        help=f"{what} on N input samples: random ones (--seed, --seed+1, ...; default 1), or the first N of "
        "--inputs, which may stack samples on a leading axis (default: all of them)",
    )


def _budget(args: argparse.Namespace):
    from edgetvm.pipeline.gates import Budget, parse_regression

    return Budget(
        args.max_accuracy_drop, args.max_latency_ms, args.baseline_report, parse_regression(args.max_regression)
    )


def _enforce(args: argparse.Namespace, budget, measurements) -> None:
    from edgetvm.pipeline.gates import enforce

    for result in enforce(budget, measurements, args.junit):
        if not args.quiet:
            print(f"gate ok: {result.message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgetvm", description="Compile, deploy and measure models on edge boards.")
    parser.add_argument("--version", action="version", version=f"edgetvm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("targets", help="list target presets")
    p.set_defaults(func=_cmd_targets)

    p = sub.add_parser("compile", help="compile a model into an artifact directory")
    _add_model_options(p)
    p.add_argument("--target", "-t", required=True, help="preset name, inline JSON or JSON file")
    p.add_argument("--output", "-o", required=True, help="artifact directory to write")
    _add_scheme_options(p)
    _add_calibration_options(p)
    p.add_argument("--db", metavar="DIR", help="apply the records of this tuning database (edgetvm tune --db)")
    _add_inputs_options(p)  # what the budgets measure with (x86 builds: run here)
    _add_gate_options(p)
    _add_samples_option(p, "--max-accuracy-drop with --quantize keeps layers in float until the drop, measured")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("schemes", help="list quantization schemes")
    p.set_defaults(func=_cmd_schemes)

    p = sub.add_parser("run", help="run an x86 artifact on this machine")
    p.add_argument("artifact")
    _add_inputs_options(p)
    p.add_argument("--output", "-o", required=True, help=".npz to write the outputs to")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("compare", help="compare an artifact with the original model on the same inputs")
    p.add_argument("artifact")
    _add_inputs_options(p)
    p.add_argument("--reference", help="model to compare against (default: the one in the manifest)")
    p.add_argument("--json", help="write the metrics to this JSON file")
    group = p.add_argument_group("per-layer accuracy of a quantized artifact (rebuilt for this host)")
    group.add_argument(
        "--per-layer", action="store_true", help="SQNR of every quantized layer's output against float, worst first"
    )
    group.add_argument("--plot", metavar="F.png", help="with --per-layer: a bar chart of the per-layer SQNR")
    _add_samples_option(group, "measure")
    p.set_defaults(func=_cmd_compare)

    _add_deploy_commands(sub)
    _add_bench_command(sub)
    _add_tune_command(sub)
    return parser


def _add_tune_command(sub) -> None:
    p = sub.add_parser("tune", help="search faster schedules with MetaSchedule, seeded with the default ones")
    _add_model_options(p)
    p.add_argument("--target", "-t", required=True, help="preset name, inline JSON or JSON file")
    _add_scheme_options(p)
    _add_calibration_options(p)
    p.add_argument("--trials", type=int, required=True, help="measured candidates in this run, all tasks together")
    p.add_argument("--db", required=True, metavar="DIR", help="tuning database directory (created, or continued)")
    p.add_argument(
        "--population", type=int, default=64, metavar="N", help="evolutionary search population per task (default 64)"
    )
    p.add_argument(
        "--trials-per-iter",
        type=int,
        metavar="N",
        help="candidates measured per search iteration (default 16, at most --trials)",
    )
    p.add_argument("--board", help="board to measure on (ARM targets; default: the first for the target)")
    p.add_argument("--boards", help="boards.toml (default: $EDGETVM_BOARDS or ~/.config/edgetvm/boards.toml)")
    p.add_argument("--trust-new-host", action="store_true", help="accept and record an unknown SSH host key")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure on any board of a TVM RPC tracker's key")
    p.add_argument("--rpc-key", help="the tracker key of the boards to use, e.g. rpi4")
    p.set_defaults(func=_cmd_tune)


def _cmd_tune(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from edgetvm.pipeline.ingest import load_model
    from edgetvm.pipeline.quantize import prepare_for_target
    from edgetvm.pipeline.tensor_spec import parse_shape_option
    from edgetvm.pipeline.tune import TuneOptions, local_measurer, tune_model
    from edgetvm.targets import resolve_target

    target = resolve_target(args.target)
    target.check_toolchain()
    options = TuneOptions(args.trials, Path(args.db), args.trials_per_iter, args.population)
    scheme = _chosen_scheme(args)
    with _progress(args, f"importing {args.model}"):
        imported = load_model(args.model, parse_shape_option(args.input_shape))
    with _progress(args, "calibrating" if scheme.activation_mode == "static" else "quantizing") as progress:
        # the quantized model's int8 and packed kernels are the functions compile builds
        imported, scheme, _ = prepare_for_target(imported, scheme, target, _calibration_options(args), progress.update)
    with _progress(args, f"tuning for {target.name}") as progress:
        if target.is_host and not (args.board or args.rpc_tracker):
            session = nullcontext(local_measurer(target))
        else:
            from edgetvm.deploy.tuning_session import BoardTuningOptions, board_measurer

            board = BoardTuningOptions(args.board, args.boards, args.trust_new_host, args.rpc_tracker, args.rpc_key)
            session = board_measurer(target, board, progress.update)
        with session as measurer:
            report = tune_model(imported, target, options, measurer, progress.update)
    print(report.summary())
    return 0


def _add_bench_command(sub) -> None:
    p = sub.add_parser("bench", help="time edgetvm builds against onnxruntime / tflite-runtime, here or on a board")
    _add_model_options(p)
    p.add_argument(
        "--target",
        "-t",
        default="x86",
        help="x86 (default) runs here; a board target (rpi4) runs everything on a board",
    )
    p.add_argument("--board", help="board name from the boards file, or 'emulated' (default: first for the target)")
    p.add_argument("--boards", help="boards.toml (default: $EDGETVM_BOARDS or ~/.config/edgetvm/boards.toml)")
    p.add_argument("--trust-new-host", action="store_true", help="accept and record an unknown SSH host key")
    p.add_argument("--schemes", default="none", help="comma-separated edgetvm schemes (default none)")
    _add_calibration_options(p)
    p.add_argument("--threads", type=int, help="threads of every runtime (default: the target's cores)")
    p.add_argument("--repeat", type=int, default=30, help="timed rounds, every variant once per round (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    p.add_argument(
        "--settle-ms",
        type=float,
        default=200.0,
        help="untimed runs of a variant before each timed one, so that the previous runtime's spinning threads "
        "have stopped (default 200)",
    )
    _add_inputs_options(p)
    p.add_argument(
        "--eval-set",
        metavar="DATA.npz",
        help="also score every variant's top-1 on these samples (stacked inputs and an optional 'label' array): "
        "accuracy against the labels, agreement with the float reference (host benches)",
    )
    p.add_argument("--db", metavar="DIR", help="also bench each scheme built with this tuning database (+tuned)")
    p.add_argument("--output", "-o", required=True, help="directory for bench.json, bench.md, bench.png, builds")
    _add_gate_options(p)
    p.add_argument("--json", action="store_true", help="print bench.json instead of the table")
    p.set_defaults(func=_cmd_bench)


def _add_deploy_commands(sub) -> None:
    p = sub.add_parser("deploy", help="run an artifact on a board over SSH + TVM RPC and measure it")
    p.add_argument("artifact")
    p.add_argument("--board", help="board name from the boards file, or 'emulated' (default: first for the target)")
    p.add_argument("--boards", help="boards.toml (default: $EDGETVM_BOARDS or ~/.config/edgetvm/boards.toml)")
    _add_inputs_options(p)
    p.add_argument("--reference", help="original model to compare with on the host (default: the manifest's)")
    p.add_argument("--repeat", type=int, default=10, help="timed runs after one warm-up (default 10)")
    p.add_argument("--threads", type=int, help="runtime threads on the board (default: the target's cores)")
    p.add_argument("--trust-new-host", action="store_true", help="accept and record an unknown SSH host key")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", help="take a board from a TVM RPC tracker (board farm)")
    p.add_argument("--rpc-key", help="the tracker key of the boards to use, e.g. rpi4")
    p.add_argument("--output", "-o", help="report JSON to write (outputs go beside it as .npz)")
    _add_gate_options(p)
    p.set_defaults(func=_cmd_deploy)

    p = sub.add_parser("board", help="the emulated Raspberry Pi (arm64 Debian under qemu-user, SSH on 127.0.0.1)")
    p.add_argument("action", choices=["up", "down", "status", "shell", "destroy"])
    p.set_defaults(func=_cmd_board)


def _cmd_deploy(args: argparse.Namespace) -> int:
    from edgetvm.deploy.measure import DeployOptions, deploy_package
    from edgetvm.pipeline.package import Package

    budget = _budget(args)
    package = Package.load(args.artifact)
    options = DeployOptions(
        board=args.board,
        boards_file=args.boards,
        inputs=args.inputs,
        reference=args.reference,
        repeat=args.repeat,
        threads=args.threads,
        seed=args.seed,
        trust_new_host=args.trust_new_host,
        rpc_tracker=args.rpc_tracker,
        rpc_key=args.rpc_key,
    )
    with _progress(args, "deploying") as progress:
        report = deploy_package(package, options, progress.update)
    if args.output:
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(report.to_json(), indent=2) + "\n")
        _atomic_savez(path.with_suffix(".outputs.npz"), report.outputs)
    print(report.summary())
    if not budget.empty:  # after the report is written: a broken budget leaves what it measured to look at
        from edgetvm.pipeline.gates import Measurement

        accuracy = report.accuracy["outputs"] if report.accuracy else None
        _enforce(
            args,
            budget,
            [Measurement(f"deploy {package.directory.name}", "deploy", report.latency_ms["median"], accuracy)],
        )
    return 0


def _cmd_board(args: argparse.Namespace) -> int:
    from edgetvm.deploy.emulated_board import EmulatedBoard

    board = EmulatedBoard()
    if args.action == "up":
        with _progress(args, "starting the emulated board") as progress:
            state = board.up(progress.update)
        print(f"emulated board up: ssh {state.user}@{state.host} -p {state.port} (key {state.key_file})")
    elif args.action == "down":
        board.down()
        print("emulated board down")
    elif args.action == "destroy":
        board.destroy()
        print("emulated board destroyed (the cached root file system tarball is kept)")
    elif args.action == "status":
        state = board.status()
        print(f"up: {state.user}@{state.host}:{state.port}, pid {state.pid}" if state else "down")
        return 0 if state else 1
    else:
        if board.status() is None:
            raise InputError("the emulated board is down: run 'edgetvm board up' first")
        argv = board.ssh_command()
        os.execvp(argv[0], argv)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``edgetvm ARGS``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = func(args)
        sys.stdout.flush()  # a closed pipe raises here, not in Python's flush at exit
        return code
    except EdgeTVMError as err:
        if args.verbose:
            log.exception("failed")
        print(f"edgetvm {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"edgetvm {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Python flushes stdout again at exit and would print a second traceback: point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
