"""The ``edgetvm`` command line: parse, validate, call the typed API, print.

Exit codes are fixed per error kind; see ``edgetvm.errors``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from edgetvm import __version__
from edgetvm.errors import EXIT_INTERRUPTED, EdgeTVMError, InputError

log = logging.getLogger("edgetvm")


def _cmd_targets(args: argparse.Namespace) -> int:
    from edgetvm.targets import list_presets

    for preset in list_presets():
        board = "emulated board available" if preset.emulated_board else ("runs here" if preset.is_host else "board")
        print(f"{preset.name:<8} {preset.description}  [{board}]")
    return 0


def _cmd_compile(args: argparse.Namespace) -> int:
    from edgetvm.pipeline.build import build_package
    from edgetvm.pipeline.ingest import load_model
    from edgetvm.pipeline.quantize import quantize
    from edgetvm.pipeline.schemes import get_scheme
    from edgetvm.pipeline.tensor_spec import parse_shape_option
    from edgetvm.targets import resolve_target

    target = resolve_target(args.target)
    target.check_toolchain()
    budget = _budget(args)
    if not budget.empty:
        from edgetvm.pipeline.gates import require_host

        require_host(target)
    scheme = get_scheme(args.quantize)
    shapes = parse_shape_option(args.input_shape)
    with _progress(args, f"importing {args.model}"):
        imported = load_model(args.model, shapes)
    if not scheme.is_float:
        with _progress(args, f"quantizing with {scheme.name}"):
            imported = quantize(imported, scheme)
    with _progress(args, f"compiling for {target.name}"):
        package = build_package(imported, target, args.output, scheme.manifest_entry())
    print(f"wrote {package.directory} ({target.name}, {package.manifest['library']['machine']})")
    if imported.quantization:
        q = imported.quantization
        print(f"quantized model ({q['source']}): {q['integer_layers']} integer layer(s), {q['float_layers']} float")
    schedules = package.manifest["schedules"]
    rules = ", ".join(f"{rule} {count}" for rule, count in schedules["rules"].items() if rule != "naive")
    naive = ", ".join(schedules["naive"]) or "none"
    print(f"default schedules: {rules}; naive (TVM's untouched loops): {naive}")
    if not budget.empty:
        from edgetvm.pipeline.gates import measure_host_build
        from edgetvm.pipeline.inputs import load_inputs

        with _progress(args, "measuring the build against its budgets"):
            measurement = measure_host_build(package, load_inputs(args.inputs, package.inputs, args.seed))
        _enforce(args, budget, [measurement])
    return 0


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
    inputs = load_inputs(args.inputs, package.inputs, seed=args.seed)
    result = compare_package(package, inputs, args.reference)
    for out in result.outputs:
        top1 = "n/a" if out.top1_agreement is None else f"{out.top1_agreement:.1%}"
        print(f"{out.name}: max abs err {out.max_abs_error:.3g}, cosine {out.cosine:.6f}, top-1 agreement {top1}")
    if args.json:
        _atomic_write(Path(args.json), json.dumps(result.to_json(), indent=2) + "\n")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from edgetvm.pipeline.bench import BenchOptions, run_bench
    from edgetvm.pipeline.bench_report import table_rows, threads_text
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
    )
    with _progress(args, f"benchmarking {args.model}") as progress:
        report = run_bench(args.model, args.output, options, progress.update)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(table_rows(report)))
        print(f"wrote {args.output}: bench.json, bench.md, bench.png ({threads_text(report.host['threads'])})")
    if not budget.empty:
        from edgetvm.pipeline.gates import bench_measurements

        _enforce(args, budget, bench_measurements(report.to_json()))
    return 0


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _atomic_savez(path: Path, arrays: dict) -> None:
    import numpy as np

    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


class _progress:
    """A rich spinner for a step on a terminal; plain lines on stderr otherwise; nothing with --quiet."""

    def __init__(self, args: argparse.Namespace, message: str):
        self.quiet = getattr(args, "quiet", False)
        self.enabled = not self.quiet and sys.stdout.isatty()
        self.message = message
        self._status = None

    def update(self, message: str) -> None:
        if self._status is not None:
            self._status.update(message)
        elif not self.quiet:  # a log file or CI: one plain line per step
            print(f"edgetvm: {message}", file=sys.stderr, flush=True)

    def __enter__(self):
        if self.enabled:
            from rich.console import Console

            self._status = Console().status(self.message)
            self._status.__enter__()
        return self

    def __exit__(self, *exc):
        if self._status is not None:
            self._status.__exit__(*exc)
        return False


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
    p.add_argument("--quantize", default="none", metavar="SCHEME", help="quantization scheme (default none)")
    _add_inputs_options(p)  # what the budgets measure with (x86 builds: run here)
    _add_gate_options(p)
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
    p.set_defaults(func=_cmd_compare)

    _add_deploy_commands(sub)
    _add_bench_command(sub)
    return parser


def _add_bench_command(sub) -> None:
    p = sub.add_parser("bench", help="time edgetvm builds against onnxruntime / tflite-runtime on this host")
    _add_model_options(p)
    p.add_argument("--target", "-t", default="x86", help="this host's target (default x86); boards: not yet")
    p.add_argument("--schemes", default="none", help="comma-separated edgetvm schemes (default none)")
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
        _atomic_write(path, json.dumps(report.to_json(), indent=2) + "\n")
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
    import os

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
        return func(args)
    except EdgeTVMError as err:
        if args.verbose:
            log.exception("failed")
        print(f"edgetvm {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"edgetvm {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
