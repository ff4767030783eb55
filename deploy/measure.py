"""Deploy a package to a board, run it there, measure latency and accuracy against the host reference."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetvm.deploy.boards import BoardConfig, boards_file, load_boards, select_board
from edgetvm.deploy.bootstrap import ensure_runtime
from edgetvm.deploy.emulated_board import EmulatedBoard, board_cpu_env
from edgetvm.deploy.rpc_session import BoardSession, TrackerSession
from edgetvm.deploy.ssh import SSHConnection
from edgetvm.errors import BoardError, InputError, last_line
from edgetvm.pipeline.bench import latency_stats
from edgetvm.pipeline.compare import compare_outputs
from edgetvm.pipeline.inputs import load_inputs
from edgetvm.pipeline.package import Package
from edgetvm.targets import TargetPreset, resolve_target

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
_EMULATED_NOTE = "emulated board (qemu-user on the host{cpu}): timings are not hardware timings"
EMULATED_NOTE = _EMULATED_NOTE.format(cpu="")


@dataclass
class DeployOptions:
    """What ``edgetvm deploy`` was asked to do."""

    board: str | None = None
    boards_file: str | None = None
    inputs: str | None = None
    reference: str | None = None
    repeat: int = 10
    threads: int | None = None
    seed: int = 0
    trust_new_host: bool = False
    rpc_tracker: str | None = None
    rpc_key: str | None = None

    def __post_init__(self) -> None:
        if self.repeat < 1:
            raise InputError(f"--repeat must be at least 1, got {self.repeat}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be at least 1, got {self.threads}")
        if bool(self.rpc_tracker) != bool(self.rpc_key):
            raise InputError(
                "--rpc-tracker and --rpc-key go together (e.g. --rpc-tracker 10.0.0.5:9190 --rpc-key rpi4)"
            )
        if self.rpc_tracker and (self.board or self.threads):
            raise InputError(
                "--rpc-tracker takes any board of its key: drop --board and --threads (a tracker board "
                "runs with the threads its server was started with)"
            )


@dataclass
class DeployReport:
    """The result of one deploy: where, what, how fast, how accurate."""

    board: dict[str, Any]
    target: str
    artifact: dict[str, Any]
    latency_ms: dict[str, float]
    accuracy: dict[str, Any] | None
    outputs: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def to_json(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "board": self.board,
            "target": self.target,
            "artifact": self.artifact,
            "latency_ms": self.latency_ms,
            "accuracy": self.accuracy,
            "outputs": {name: list(array.shape) for name, array in self.outputs.items()},
        }

    def summary(self) -> str:
        lat = self.latency_ms
        threads = self.board["threads"] or "board default"
        lines = [
            f"board {self.board['name']} ({self.board['machine']}, {self.board['os']}, {self.board['cpu_count']} cpus)"
            f" target {self.target}",
            f"latency: median {lat['median']:.2f} ms, p90 {lat['p90']:.2f}, p99 {lat['p99']:.2f}, "
            f"mean {lat['mean']:.2f} ± {lat['std']:.2f} (n={lat['n']}, {threads} threads)",
        ]
        if self.board["emulated"]:
            cpu = self.board.get("qemu_cpu")  # the programs ran as the target's CPU
            lines.append(f"note: {_EMULATED_NOTE.format(cpu=f', as a {cpu}' if cpu else '')}")
        for out in (self.accuracy or {}).get("outputs", []):
            top1 = "n/a" if out["top1_agreement"] is None else f"{out['top1_agreement']:.1%}"
            lines.append(
                f"{out['name']}: max abs err {out['max_abs_error']:.3g}, cosine {out['cosine']:.6f}, top-1 {top1}"
                f" vs {self.accuracy['reference_runtime']} on the host"
            )
        if self.accuracy is None:
            lines.append("accuracy: no reference model (give --reference MODEL)")
        return "\n".join(lines)


def resolve_board(package: Package, options: DeployOptions, progress: Progress | None = None) -> BoardConfig:
    """The configured board for the package's target, or the emulated board (started if needed)."""
    return board_for_target(
        package.target(), options.board, options.boards_file, f"{package.directory} was built for", progress
    )


def board_for_target(
    target: TargetPreset,
    board_name: str | None,
    boards_file_option: str | None,
    what: str = "the build is for",
    progress: Progress | None = None,
) -> BoardConfig:
    """The board named (or the first configured for ``target``), else the emulated board, started if needed.

    ``what`` starts the error messages (``out/rpi4 was built for``).
    """
    boards = load_boards(boards_file(boards_file_option), must_exist=bool(boards_file_option))
    board = select_board(board_name, target.name, boards)
    if board is not None:
        board_arch = resolve_target(board.target).arch
        if board_arch != target.arch:
            raise InputError(
                f"{what} {target.name} ({target.arch}) but board {board.name!r} is a {board.target} ({board_arch}): "
                f"use --target {board.target}"
            )
        return board
    if target.arch != "aarch64" or not target.emulated_board:
        raise InputError(
            f"{what} {target.name} ({target.arch}); no board for it is configured in "
            f"{boards_file(boards_file_option)} and the emulated board runs aarch64 (rpi4, rpi5) only"
        )
    return EmulatedBoard().up(progress).board_config(target.name)


def deploy_package(package: Package, options: DeployOptions, progress: Progress | None = None) -> DeployReport:
    """Upload ``package`` to a board over SSH + RPC, run it, time it, and compare with the host reference."""
    inputs = load_inputs(options.inputs, package.inputs, options.seed)
    target = package.target()
    if options.rpc_tracker:
        with TrackerSession(options.rpc_tracker, options.rpc_key) as session:
            outputs, samples = _run_remote(
                session.remote, session.name, session.alive, package, inputs, options.repeat, progress
            )
        board_facts = {
            "name": session.name,
            "emulated": None,
            "host": options.rpc_tracker,
            "threads": None,
            "machine": package.arch,
            "os": "unknown",
            "cpu_count": None,
            "uname": None,
        }
    else:
        board = resolve_board(package, options, progress)
        threads = options.threads or target.threads
        env = board_cpu_env(board, target)
        with SSHConnection(board, trust_new_host=options.trust_new_host) as conn:
            facts = ensure_runtime(conn, target, progress)
            with BoardSession(conn, threads=threads, progress=progress, env=env) as session:
                outputs, samples = _run_remote(
                    session.remote, board.name, session.server.alive, package, inputs, options.repeat, progress
                )
        board_facts = {
            "name": board.name,
            "emulated": board.emulated,
            "host": board.host,
            "threads": threads,
            **facts.to_json(),
            **({"note": EMULATED_NOTE} if board.emulated else {}),
            **({"qemu_cpu": env["QEMU_CPU"]} if env else {}),
        }
    accuracy = _accuracy(package, options.reference, inputs, outputs)
    return DeployReport(
        board=board_facts,
        target=target.name,
        artifact={
            "directory": str(package.directory),
            "sha256": package.library_sha256,
            "model_sha256": package.manifest["model"]["sha256"],
            "quantization": package.manifest["quantization"],
        },
        latency_ms=latency_stats(samples),
        accuracy=accuracy,
        outputs=outputs,
    )


def _run_remote(
    remote, board_name: str, alive: Callable[[], bool], package: Package, inputs, repeat: int, progress: Progress | None
):
    from tvm import relax

    from edgetvm.pipeline.run_local import invoke_main, tensor_args

    name = f"model-{package.library_sha256[:12]}.so"
    try:
        if progress:
            progress(f"uploading {package.library_path.name} ({package.library_path.stat().st_size >> 10} KiB)")
        remote.upload(str(package.library_path), name)
        device = remote.cpu()
        vm = relax.VirtualMachine(remote.load_module(name), device)
        args = tensor_args(package, inputs, device)
        if progress:
            progress("running on the board")
        outputs = invoke_main(vm, package, args)
        if progress:
            progress(f"timing {repeat} runs (after a warm-up run)")
        timer = vm.time_evaluator("main", device, number=1, repeat=repeat, min_repeat_ms=0)
        samples = [seconds * 1e3 for seconds in timer(*args).results]
    except Exception as err:  # TVM surfaces a dead server or a broken tunnel as TVMError/RuntimeError
        why = "the board failed to run the model" if alive() else "the RPC server on the board stopped"
        raise BoardError(f"board {board_name!r}: {why}: {last_line(err)}") from err
    return outputs, samples


def _accuracy(package: Package, reference: str | None, inputs, outputs) -> dict[str, Any] | None:
    from edgetvm.pipeline.reference import ReferenceModel

    path = Path(reference or package.manifest["model"]["path"])
    if not path.is_file():
        if reference:
            raise InputError(f"--reference {reference}: no such file")
        log.warning("reference model %s is gone; the report has no accuracy", path)
        return None
    model = ReferenceModel(path)
    expected = model.run(inputs)
    names = [spec.name for spec in package.outputs]
    agreements = compare_outputs(names, [outputs[n] for n in names], expected)
    return {"reference": str(path), "reference_runtime": model.runtime, "outputs": [a.to_json() for a in agreements]}
