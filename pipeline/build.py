"""Build: compile an imported model for a target and write a ``Package`` directory."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from edgetvm import __version__
from edgetvm.errors import BuildError, last_line
from edgetvm.kernels_schedules.apply_schedules import ScheduleReport
from edgetvm.kernels_schedules.apply_tuned_schedules import TunedReport
from edgetvm.pipeline.ingest import ImportedModel, file_sha256
from edgetvm.pipeline.package import FORMAT_VERSION, LIBRARY, Package, elf_machine, staging_directory, write_manifest
from edgetvm.targets import TargetPreset

log = logging.getLogger(__name__)


def compile_module(
    imported: ImportedModel,
    target: TargetPreset,
    report: ScheduleReport | None = None,
    tuned: TunedReport | None = None,
):
    """Run the Relax pipeline (NHWC layout, default schedules) and code generation; returns the executable.

    ``report`` (a ``ScheduleReport``) is filled with the schedule each fused function got. With ``tuned`` (a
    ``TunedReport`` naming one target's tuning database directory), functions with a record there get the best recorded
    schedule, and the report says which did and which kept the defaults.

    Raises
    ------
    BuildError
        When TVM fails on a model the importer accepted.
    """
    import tvm

    from edgetvm.kernels_schedules.pipeline import relax_pipeline

    tvm_target = target.tvm_target()
    tuned_pass = None
    if tuned is not None:
        from edgetvm.kernels_schedules.apply_tuned_schedules import ApplyTunedSchedules
        from edgetvm.pipeline.tune import json_database

        tuned_pass = ApplyTunedSchedules(tvm_target, json_database(tuned.db), tuned)
    try:
        pipeline = relax_pipeline(tvm_target, report, tuned=tuned_pass)
        return tvm.compile(imported.mod, target=tvm_target, relax_pipeline=pipeline)
    except Exception as err:  # TVM raises TVMError and friends from deep inside its passes
        raise BuildError(f"compiling {imported.path} for {target.name} failed in TVM: {last_line(err)}") from err


def export_library(executable, target: TargetPreset, path: Path) -> None:
    """Link the executable into a shared library for the target (with its cross compiler)."""
    from tvm.support import cc

    target.check_toolchain()
    fcompile = cc.cross_compiler(target.cross_compiler) if target.cross_compiler else None
    try:
        executable.export_library(str(path), fcompile=fcompile)
    except Exception as err:  # the linker's failure surfaces as RuntimeError with its output
        raise BuildError(f"linking {path.name} for {target.name} failed: {last_line(err)}") from err


def build_package(
    imported: ImportedModel,
    target: TargetPreset,
    out_dir: str | Path,
    quantization: dict | str = "none",
    extra_files: dict[str, str] | None = None,
    db: str | Path | None = None,
) -> Package:
    """Compile ``imported`` for ``target`` into ``out_dir`` (``model.so`` + ``manifest.json``), atomically.

    ``extra_files`` (name -> text) are written beside them, e.g. the calibration ranges of a static scheme.
    ``db``: a tuning database directory (``edgetvm tune --db``) whose records schedule the functions they cover.
    A model that arrived quantized records its own quantization (``ImportedModel.quantization``) in the manifest.
    """
    import tvm

    target.check_toolchain()
    report = ScheduleReport()
    tuned = None
    if db is not None:
        from edgetvm.pipeline.tune import open_database, target_db_dir

        open_database(db, target, create=False)  # an InputError now when it has no records for the target
        tuned = TunedReport(str(target_db_dir(db, target).resolve()))
    executable = compile_module(imported, target, report, tuned)
    out_dir = Path(out_dir)
    with staging_directory(out_dir) as staging:
        library = staging / LIBRARY
        export_library(executable, target, library)
        machine = elf_machine(library)
        if machine != target.arch:
            raise BuildError(f"{library.name} was linked for {machine}, not for {target.name}'s {target.arch}")
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "edgetvm_version": __version__,
            "tvm_version": tvm.__version__,
            "model": {
                "path": str(imported.path.resolve()),
                "sha256": imported.sha256,
                "format": imported.format,
                "input_shapes": {name: list(shape) for name, shape in imported.input_shapes.items()},
            },
            "target": target.to_json(),
            "inputs": [spec.to_json() for spec in imported.inputs],
            "outputs": [spec.to_json() for spec in imported.outputs],
            "quantization": imported.quantization if imported.quantization and quantization == "none" else quantization,
            "schedules": report.to_json(),
            "tuning": tuned.to_json() if tuned is not None else None,
            "library": {"file": LIBRARY, "sha256": file_sha256(library), "machine": machine},
        }
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        write_manifest(staging, manifest)
    log.info("wrote %s for %s", out_dir, target.name)
    return Package.load(out_dir)
