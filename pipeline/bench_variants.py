"""The variants that ``edgetvm bench`` measures: edgetvm builds per scheme and the frameworks' own runtimes.

Each variant is a name and a function that runs one inference on a dict of inputs and returns the outputs in the
model's order. A variant that cannot be built or loaded is kept with its ``error``, so that the report has a row
saying why, instead of the whole bench failing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetvm.errors import BuildError, last_line
from edgetvm.pipeline.ingest import ImportedModel
from edgetvm.pipeline.package import Package
from edgetvm.pipeline.schemes import QuantScheme
from edgetvm.targets import TargetPreset

log = logging.getLogger(__name__)

RUNTIMES = ("edgetvm", "onnxruntime", "tflite-runtime")
RunFn = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
Progress = Callable[[str], None]


@dataclass
class Variant:
    """One way of running the model.

    Attributes
    ----------
    runtime : str
        ``edgetvm``, ``onnxruntime`` or ``tflite-runtime``.
    variant : str
        The scheme name for edgetvm (``none``, ``w8a8-dynamic``); ``float``, ``quantize_dynamic``,
        ``quantize_static`` or ``int8`` for the baselines.
    run : callable or None
        One inference: inputs by name -> outputs in the model's order. None when the variant failed to build.
    details : dict
        What was run (artifact directory, quantizer settings), for the report.
    error : str or None
        Why the variant could not be built, loaded or run.
    time_remote : callable or None
        For a variant that runs elsewhere (a board): one timed run there, after untimed runs for the settle time
        it is given in seconds; returns the run's seconds by that machine's clock. The bench then uses it instead
        of timing ``run`` with the host's clock, which would count the round trip.
    """

    runtime: str
    variant: str
    run: RunFn | None = field(default=None, repr=False)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    time_remote: Callable[[float], float] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"variant runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if (self.run is None) == (self.error is None):
            raise ValueError(f"variant {self.label}: give exactly one of run and error")

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.variant}"


def edgetvm_packages(
    imported: ImportedModel,
    target: TargetPreset,
    schemes: list[QuantScheme],
    builds_dir: Path,
    progress: Progress | None = None,
    calibration=None,
    db: str | Path | None = None,
    tuned_schemes: tuple[str, ...] | None = None,
) -> list[tuple[str, Package | str]]:
    """Quantize and ``build_package`` into ``builds_dir/NAME`` for every scheme: (name, package or error).

    Static schemes are calibrated with ``calibration`` (a ``CalibrationOptions``), once per scheme. With ``db`` (a
    tuning database), each scheme (each of ``tuned_schemes`` when given) also gets a ``SCHEME+tuned`` build with
    its records; one whose functions the database has no record for gets an error instead of a row that would
    time the default schedules under a "+tuned" name (int8 kernels are other functions than the float model's:
    ``edgetvm tune --quantize SCHEME`` tunes them). A scheme whose build fails in TVM (``BuildError``) gets its
    error text; bad input (calibration data included) still raises.
    """
    from edgetvm.pipeline.build import build_package
    from edgetvm.pipeline.calibrate import CalibrationOptions, quantization_manifest, ranges_files
    from edgetvm.pipeline.quantize import prepare_for_target

    built: list[tuple[str, Package | str]] = []
    for scheme in schemes:
        tuned = db is not None and (tuned_schemes is None or scheme.name in tuned_schemes)
        builds = [(scheme.name, None)] + ([(f"{scheme.name}+tuned", db)] if tuned else [])
        options = (calibration or CalibrationOptions()).for_scheme(scheme)
        try:  # once per scheme: the +tuned build compiles the same quantized module
            module, scheme, ranges = prepare_for_target(imported, scheme, target, options, progress)
        except BuildError as err:
            log.warning("edgetvm %s: %s", scheme.name, err)
            built += [(name, str(err)) for name, _ in builds]
            continue
        quantization = quantization_manifest(scheme, ranges, target.int8_depthwise)
        files = ranges_files(ranges)
        for name, db_used in builds:
            if progress:
                progress(f"building {imported.path.name} with edgetvm ({name}) for {target.name}")
            try:
                package = build_package(module, target, builds_dir / name, quantization, files, db=db_used)
            except BuildError as err:
                log.warning("edgetvm %s: %s", name, err)
                built.append((name, str(err)))
                continue
            untuned = (package.manifest.get("tuning") or {}).get("tasks_untuned", [])
            if untuned:
                built.append((name, _not_tuned(scheme.name, len(untuned), db_used)))
                continue
            built.append((name, package))
    return built


def edgetvm_variants(
    imported: ImportedModel,
    target: TargetPreset,
    schemes: list[QuantScheme],
    builds_dir: Path,
    progress: Progress | None = None,
    calibration=None,
    db: str | Path | None = None,
    tuned_schemes: tuple[str, ...] | None = None,
) -> list[Variant]:
    """One variant per scheme: ``edgetvm_packages`` loaded on this host with ``LocalRunner``."""
    from edgetvm.pipeline.run_local import LocalRunner

    variants = []
    packages = edgetvm_packages(imported, target, schemes, builds_dir, progress, calibration, db, tuned_schemes)
    for scheme_name, package in packages:
        if isinstance(package, str):
            variants.append(Variant("edgetvm", scheme_name, error=package))
            continue
        runner = LocalRunner(package)
        names = [spec.name for spec in package.outputs]

        def run(inputs, runner=runner, names=names) -> list[np.ndarray]:
            outputs = runner.run(inputs)
            return [outputs[name] for name in names]

        variants.append(Variant("edgetvm", scheme_name, run, package_details(package, builds_dir)))
    return variants


def _not_tuned(scheme: str, functions: int, db) -> str:
    quantize = "" if scheme == "none" else f" --quantize {scheme}"
    return f"not tuned: {functions} functions have no record in {db} (edgetvm tune{quantize} --db {db} first)"


def package_details(package: Package, builds_dir: Path) -> dict[str, Any]:
    """What a report says of an edgetvm build: its directory (relative to the report) and library digest."""
    return {
        "artifact": str(package.directory.relative_to(builds_dir.parent)),
        "library_sha256": package.library_sha256,
    }


@dataclass
class BaselineModel:
    """A model file that a framework's own runtime runs as a baseline, made on this host.

    ``path`` is None (and ``error`` says why) when the quantizer failed on the model.
    """

    runtime: str
    variant: str
    path: Path | None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class BaselineCalibration:
    """What onnxruntime's ``quantize_static`` baseline calibrates on, and how its details name it."""

    samples: list[dict[str, np.ndarray]]
    source: str


def baseline_calibration(calibration, specs, inputs: dict[str, np.ndarray]) -> BaselineCalibration:
    """The data edgetvm's static scheme calibrates on (``calibration.data``, a ``CalibrationOptions``) when there
    is some, so both quantizers see the same samples; else the bench inputs themselves."""
    from edgetvm.pipeline.calibrate import CalibrationData

    if calibration is not None and calibration.data is not None:
        samples = list(CalibrationData(calibration.data, specs))
        return BaselineCalibration(samples, f"{len(samples)} samples of {calibration.data}, as edgetvm's w8a8-static")
    return BaselineCalibration([inputs], "1 input set: the bench inputs themselves (so its accuracy is optimistic)")


def baseline_models(
    model_path: Path,
    model_format: str,
    calibration: BaselineCalibration,
    baselines_dir: Path,
    progress: Progress | None = None,
) -> list[BaselineModel]:
    """The baselines' model files; the first one is the float model itself.

    ONNX: the model, then ``quantize_dynamic`` and ``quantize_static`` (calibrated on ``calibration``) of it,
    written to ``baselines_dir``. TFLite: the model as it is (``float``, or ``int8`` for an int8 model).
    """
    if model_format == "tflite":
        return [BaselineModel("tflite-runtime", _tflite_variant_name(model_path), model_path)]
    baselines_dir.mkdir(parents=True, exist_ok=True)
    models = [BaselineModel("onnxruntime", "float", model_path)]
    for name, quantizer in (("quantize_dynamic", _quantize_dynamic), ("quantize_static", _quantize_static)):
        if progress:
            progress(f"building the onnxruntime {name} baseline")
        output = baselines_dir / f"{name}.onnx"
        try:
            details = quantizer(model_path, output, calibration)
        except Exception as err:  # ORT's quantizers fail in their own ways (Fail, RuntimeError, KeyError...)
            log.warning("onnxruntime %s could not be built: %s", name, last_line(err))
            log.debug("onnxruntime %s", name, exc_info=True)
            models.append(BaselineModel("onnxruntime", name, None, error=f"{type(err).__name__}: {last_line(err)}"))
            continue
        details["model"] = str(output.relative_to(baselines_dir.parent))
        models.append(BaselineModel("onnxruntime", name, output, details))
    return models


def baseline_variants(
    model_path: Path,
    model_format: str,
    threads: int,
    calibration: BaselineCalibration,
    baselines_dir: Path,
    progress: Progress | None = None,
) -> list[Variant]:
    """The framework's own runs of the model on this host (``baseline_models``); the first is the float reference.

    onnxruntime runs on the CPU provider; tflite-runtime with its default delegates.
    """
    if model_format == "onnx":
        import onnxruntime as ort

        ort.set_default_logger_severity(3)  # errors only: ORT warns about every unused initializer of a quantized model
    variants = []
    for model in baseline_models(model_path, model_format, calibration, baselines_dir, progress):
        if model.error is not None:
            variants.append(Variant(model.runtime, model.variant, error=model.error))
            continue

        def make(model=model):
            run, session = _open(model.path, threads)
            return run, {**model.details, **session}

        variants.append(_guarded(model.runtime, model.variant, make))
    return variants


def _guarded(runtime: str, variant: str, make: Callable[[], tuple[RunFn, dict[str, Any]]]) -> Variant:
    """The variant ``make()`` returns, or an error variant with the failure's last line."""
    try:
        run, details = make()
    except Exception as err:  # a baseline fails in its framework's own ways (ORT's Fail, RuntimeError, ...)
        log.warning("%s %s could not be built: %s", runtime, variant, last_line(err))
        log.debug("%s %s", runtime, variant, exc_info=True)
        return Variant(runtime, variant, error=f"{type(err).__name__}: {last_line(err)}")
    return Variant(runtime, variant, run, details)


def _open(path: Path, threads: int) -> tuple[RunFn, dict[str, Any]]:
    from edgetvm.pipeline.reference import ReferenceModel

    model = ReferenceModel(path, threads=threads)
    if model.format == "onnx":
        return model.run, {"provider": "CPUExecutionProvider", "intra_op_num_threads": threads}
    return model.run, {"num_threads": threads, "delegates": "tflite-runtime's default (XNNPACK for float)"}


def _tflite_variant_name(path: Path) -> str:
    """``int8`` for a model whose first input is an integer tensor (a fully quantized model), else ``float``."""
    import tflite

    from edgetvm.pipeline.ingest import verified_tflite

    model = verified_tflite(path.read_bytes(), path)
    subgraph = model.Subgraphs(0)
    tensor_type = subgraph.Tensors(int(subgraph.Inputs(0))).Type()
    return "int8" if tensor_type in (tflite.TensorType.INT8, tflite.TensorType.UINT8) else "float"


def _quantize_dynamic(model_path: Path, output: Path, _calibration) -> dict[str, Any]:
    from onnxruntime.quantization import quantize_dynamic

    with _quantizer_warnings_to_debug():
        quantize_dynamic(model_path, output)
    return {"quantizer": "onnxruntime.quantization.quantize_dynamic (defaults: QOperator, int8 weights per tensor)"}


def _quantize_static(model_path: Path, output: Path, calibration: BaselineCalibration) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration.samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with _quantizer_warnings_to_debug():
        quantize_static(model_path, output, Reader())
    return {
        "quantizer": "onnxruntime.quantization.quantize_static (defaults: QDQ, int8 per tensor, min-max)",
        "calibration": calibration.source,
    }


class _ToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        log.debug("onnxruntime.quantization: %s", record.getMessage())
        return False


@contextmanager
def _quantizer_warnings_to_debug() -> Iterator[None]:
    """Show the ORT quantizer's root-logger warnings only with ``-v``: they are advice about the model, per node.

    It asks for ``quant_pre_process`` (the bench quantizes the user's model as given: that pre-processing needs
    sympy, made quantize_dynamic 3x slower on the PP-OCR classifier and broke quantize_static on opset-11 models)
    and warns once per Conv whose bias is computed ("Expected bias ... to be an initializer").
    """
    root = logging.getLogger()
    to_debug = _ToDebug()
    root.addFilter(to_debug)
    try:
        yield
    finally:
        root.removeFilter(to_debug)
