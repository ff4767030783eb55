"""``edgetvm bench --target rpi4``: every variant runs and is timed on the board, the baselines too.

The host builds what it can: the edgetvm packages (cross-compiled per scheme), the quantized ONNX baselines
(``quantize_dynamic``, ``quantize_static``) and the float reference outputs. The board runs everything timed:
the edgetvm builds over TVM RPC (``BoardSession``) and onnxruntime / tflite-runtime in one long-lived baseline
worker (``BoardBaselineWorker``), their rounds interleaved as on the host. Each run is timed by the board's clock
(``time_evaluator`` on the RPC server, ``perf_counter`` in the worker), so the SSH round trips are not counted.
Accuracy is measured against the float model run by its framework on the host.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetvm.deploy.baseline_runtime import ensure_baseline_runtime
from edgetvm.deploy.baseline_session import BoardBaselineWorker, WorkerRequestError
from edgetvm.deploy.boards import BoardConfig
from edgetvm.deploy.bootstrap import BoardFacts, check_board, ensure_runtime
from edgetvm.deploy.emulated_board import board_cpu_env
from edgetvm.deploy.measure import EMULATED_NOTE, board_for_target
from edgetvm.deploy.rpc_session import BoardSession
from edgetvm.deploy.ssh import SSHConnection, quote
from edgetvm.errors import InputError, last_line
from edgetvm.pipeline.bench import REPORT, BenchOptions, BenchReport, add_ratios, measure_variants, model_facts
from edgetvm.pipeline.bench_variants import BaselineModel, Variant, package_details
from edgetvm.pipeline.package import Package, check_replaceable, staging_directory

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
BENCH_KIND = "a bench output directory"
MAX_SETTLE_RUNS = 100  # untimed runs before a timed one on the RPC server, whatever --settle-ms asks


@dataclass
class BoardBenchOptions:
    """Which board ``edgetvm bench`` runs on (the bench itself is ``BenchOptions``)."""

    board: str | None = None
    boards_file: str | None = None
    trust_new_host: bool = False


def run_board_bench(
    model: str | Path,
    out_dir: str | Path,
    options: BenchOptions,
    board_options: BoardBenchOptions,
    progress: Progress | None = None,
) -> BenchReport:
    """Build every variant of ``model`` on this host, run and time them all on a board; write the report.

    Raises
    ------
    InputError
        For this host's target (use ``run_bench``), a bad model, scheme, inputs file or output directory.
    BoardError
        When the board cannot be reached or set up, or fails mid-bench.
    """
    from edgetvm.pipeline.ingest import load_model
    from edgetvm.pipeline.inputs import load_inputs
    from edgetvm.pipeline.schemes import get_scheme
    from edgetvm.targets import resolve_target

    target = resolve_target(options.target)
    if target.is_host:
        raise InputError(f"bench --target {target.name} runs on this host: leave out --board")
    if options.eval_set:
        raise InputError(
            "--eval-set is scored by a bench on this host (the board's variants run on inputs sent once); "
            "leave it out of a board bench"
        )
    target.check_toolchain()
    out_dir = Path(out_dir)
    check_replaceable(out_dir, REPORT, BENCH_KIND)
    schemes = [get_scheme(name) for name in options.schemes]
    threads = options.threads or target.threads
    board = board_for_target(target, board_options.board, board_options.boards_file, "the bench is for", progress)
    if progress:
        progress(f"importing {model}")
    imported = load_model(model, options.input_shapes)
    inputs = load_inputs(options.inputs, imported.inputs, options.seed)
    with staging_directory(out_dir, REPORT, BENCH_KIND) as staging:
        built = _build_on_host(imported, target, schemes, inputs, staging, options, progress)
        with SSHConnection(board, trust_new_host=board_options.trust_new_host) as conn:
            rows, board_facts = _measure_on_board(conn, board, target, built, inputs, threads, options, progress)
        report = _report(imported, target, options, rows, board_facts, threads)
        report.save(staging)
        from edgetvm.pipeline.bench_report import markdown_report, plot_report

        (staging / "bench.md").write_text(markdown_report(report))
        plot_report(report, staging / "bench.png")
    return report


@dataclass
class _HostBuilds:
    """What the host made for the board: baseline model files, edgetvm packages, the float reference."""

    baselines: list[BaselineModel]
    packages: list[tuple[str, Package | str]]
    reference: Variant
    builds_dir: Path
    output_names: list[str]


def _build_on_host(imported, target, schemes, inputs, staging: Path, options, progress) -> _HostBuilds:
    from edgetvm.pipeline.bench_variants import baseline_calibration, baseline_models, edgetvm_packages
    from edgetvm.pipeline.reference import ReferenceModel

    calibration = baseline_calibration(options.calibration, imported.inputs, inputs)
    baselines = baseline_models(imported.path, imported.format, calibration, staging / "baselines", progress)
    reference_model = ReferenceModel(imported.path)
    reference = Variant(
        reference_model.runtime,
        f"{baselines[0].variant} on the host",
        reference_model.run,
        {"where": "host", "model": str(imported.path)},
    )
    builds = staging / "builds"
    packages = edgetvm_packages(
        imported, target, schemes, builds, progress, options.calibration, options.db, options.tuned_schemes
    )
    names = [spec.name for spec in imported.outputs]
    return _HostBuilds(baselines, packages, reference, staging / "builds", names)


def _measure_on_board(
    conn: SSHConnection, board: BoardConfig, target, built: _HostBuilds, inputs, threads: int, options, progress
) -> tuple[list, dict[str, Any]]:
    """Set the board up (TVM runtime, baselines venv), load every variant there, measure; rows and board facts."""
    facts = ensure_runtime(conn, target, progress)
    python = ensure_baseline_runtime(conn, target.arch, check_board(facts, target, board.name), progress)
    if progress:
        progress(f"starting the baseline worker on {board.name}")
    env = board_cpu_env(board, target)
    with (
        BoardBaselineWorker(conn, python, env) as worker,
        BoardSession(conn, threads=threads, progress=progress, env=env) as session,
    ):
        hello = worker.protocol.hello()
        worker.protocol.send_inputs(inputs)
        variants = _worker_variants(worker, built.baselines, threads, f"{board.name} ({hello['machine']})", progress)
        variants += _rpc_variants(session.remote, built, inputs, board.name, progress)
        rows = measure_variants(
            variants, inputs, built.output_names, options.timing(), progress, reference=built.reference
        )
    return rows, {**_board_facts(conn, board, facts, hello, threads), **({"qemu_cpu": env["QEMU_CPU"]} if env else {})}


def _worker_variants(
    worker: BoardBaselineWorker, baselines: list[BaselineModel], threads: int, board_name: str, progress
) -> list[Variant]:
    """The baselines loaded into the board's worker: a run fetches the outputs, a timed run is timed there."""
    protocol = worker.protocol
    variants = []
    for model in baselines:
        if model.error is not None:
            variants.append(Variant(model.runtime, model.variant, error=model.error))
            continue
        label = f"{model.runtime} {model.variant}"
        if progress:
            progress(f"loading {label} on {board_name}")
        try:
            remote = worker.put(model.path, f"{model.variant}{model.path.suffix}")
            session = protocol.load(label, model.runtime, remote, threads)
        except WorkerRequestError as err:
            log.warning("%s", err)
            variants.append(Variant(model.runtime, model.variant, error=f"on the board: {last_line(err)}"))
            continue
        details = {**model.details, **session, "where": f"board {board_name}, baseline worker"}
        variants.append(
            Variant(
                model.runtime,
                model.variant,
                lambda _inputs, label=label: protocol.outputs(label),  # the worker holds the inputs
                details,
                time_remote=lambda settle_s, label=label: protocol.time_once(label, settle_s),
            )
        )
    return variants


def _rpc_variants(remote, built: _HostBuilds, inputs, board_name: str, progress) -> list[Variant]:
    """The edgetvm packages loaded into the board's RPC server, inputs uploaded once."""
    variants = []
    for scheme_name, package in built.packages:
        if isinstance(package, str):
            variants.append(Variant("edgetvm", scheme_name, error=package))
            continue
        if progress:
            progress(f"uploading edgetvm {scheme_name} to {board_name}")
        try:
            variants.append(_rpc_variant(remote, scheme_name, package, inputs, built.builds_dir, board_name))
        except Exception as err:  # TVM raises TVMError / RuntimeError when the board cannot load the library
            log.warning("edgetvm %s on %s: %s", scheme_name, board_name, last_line(err))
            variants.append(Variant("edgetvm", scheme_name, error=f"on the board: {last_line(err)}"))
    return variants


def _rpc_variant(remote, scheme_name: str, package: Package, inputs, builds_dir: Path, board_name: str) -> Variant:
    from tvm import relax

    from edgetvm.pipeline.run_local import invoke_main, tensor_args

    name = f"bench-{package.library_sha256[:12]}.so"
    remote.upload(str(package.library_path), name)
    device = remote.cpu()
    vm = relax.VirtualMachine(remote.load_module(name), device)
    args = tensor_args(package, inputs, device)  # the board holds the inputs: runs send nothing
    names = [spec.name for spec in package.outputs]

    def run(_inputs) -> list[np.ndarray]:
        outputs = invoke_main(vm, package, args)
        return [outputs[name] for name in names]

    details = {**package_details(package, builds_dir), "where": f"board {board_name}, TVM RPC"}
    return Variant("edgetvm", scheme_name, run, details, time_remote=_RPCTimer(vm, device, args))


class _RPCTimer:
    """One run timed by the RPC server's clock (``time_evaluator``), after untimed runs for the settle time.

    The number of settle runs comes from the first run's time; the evaluator runs ``settle + 1`` times (after its
    own untimed first call) and the last run is the timed one.
    """

    def __init__(self, vm, device, args):
        self.vm, self.device, self.args = vm, device, args
        self._evaluator = None

    def __call__(self, settle_s: float) -> float:
        if self._evaluator is None:
            first = self._evaluate(1)[0]
            settle_runs = min(MAX_SETTLE_RUNS, math.ceil(settle_s / max(first, 1e-6))) if settle_s > 0 else 0
            self._evaluator = self.vm.time_evaluator("main", self.device, number=1, repeat=settle_runs + 1)
        return float(self._evaluator(*self.args).results[-1])

    def _evaluate(self, repeat: int) -> list[float]:
        evaluator = self.vm.time_evaluator("main", self.device, number=1, repeat=repeat)
        return list(evaluator(*self.args).results)


def _board_facts(conn: SSHConnection, board: BoardConfig, facts: BoardFacts, hello: dict, threads: int) -> dict:
    """The board as the report records it: CPU, cores, threads, emulated or not, versions of every runtime."""
    from edgetvm.pipeline.host_facts import cpu_model_in

    cpuinfo = conn.run("cat /proc/cpuinfo", check=False).stdout
    workdir = quote(board.remote_workdir)
    listing = conn.run(f"ls {workdir}/venv/lib/python3*/site-packages 2>/dev/null", check=False).stdout
    tvm = re.search(r"^apache_tvm-([^-\s]+)\.dist-info$", listing, re.MULTILINE)
    return {
        "name": board.name,
        "emulated": board.emulated,
        "host": board.host,
        "cpu": cpu_model_in(cpuinfo) or facts.machine,
        "machine": facts.machine,
        "cores": facts.cpu_count,
        "threads": threads,
        "tvm_threads": threads,
        "os": facts.os,
        "uname": facts.uname,
        "python": hello.get("python"),
        "versions": {"tvm": tvm.group(1) if tvm else None, **hello.get("versions", {})},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **({"note": EMULATED_NOTE} if board.emulated else {}),
    }


def _report(imported, target, options: BenchOptions, rows, board: dict, threads: int) -> BenchReport:
    from edgetvm.pipeline.host_facts import host_facts
    from edgetvm.pipeline.roofline import model_flops

    flops = model_flops(imported.mod)
    add_ratios(rows, flops, None)
    if not rows or rows[0].latency_ms is None:
        log.warning("the baseline %s has no latency: the report has no ratios", rows[0].label if rows else "row")
    return BenchReport(
        model=model_facts(imported, flops),
        target=target.name,
        baseline={"runtime": rows[0].runtime, "variant": rows[0].variant},
        host={**host_facts(threads), "role": "built the variants and ran the float reference; timed nothing"},
        timing={
            "warmup_rounds": options.warmup,
            "rounds": options.repeat,
            "order": "interleaved: every variant once per round, the order rotated by one each round",
            "settle_ms": options.settle_ms,
            "settle": "before each timed run, untimed runs of the same variant on the board for settle_ms (edgetvm: "
            "a run count estimated from its first run, at most 100)",
            "clock": "the board's: time_evaluator on the TVM RPC server (edgetvm), time.perf_counter in the "
            "baseline worker (onnxruntime, tflite-runtime), around one inference, inputs already on the board",
            "inputs": options.inputs or f"random, seed {options.seed}",
        },
        roofline={"model_flops": flops, "note": "no sgemm roof measured on a board"},
        results=rows,
        board=board,
    )
