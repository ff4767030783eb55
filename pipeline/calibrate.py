"""Calibration for static activation scales: data, ``collect`` (run the float model) and ``compute`` (ranges).

``CalibrationData`` iterates input dicts from an ``.npz`` file or a directory of them, each checked against the
model's inputs. ``collect`` compiles the float model for this host with every layer's input as an extra output
and runs it on each input dict, filling one histogram per layer key (``quant_layers``); ``compute`` turns those
statistics into ranges with one ``CalibrationMethod``. Collecting once and computing with several methods is
cheap; the ranges are written to the artifact directory (``calibration.json``) and can be reused with
``--calib-ranges``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetvm.errors import InputError
from edgetvm.pipeline.calibration_stats import (
    DEFAULT_PERCENTILE,
    CalibrationMethod,
    CalibrationRanges,
    CalibrationStats,
    LayerHistogram,
    LayerRange,
    threshold,
)
from edgetvm.pipeline.ingest import ImportedModel
from edgetvm.pipeline.schemes import QuantScheme
from edgetvm.pipeline.tensor_spec import TensorSpec

log = logging.getLogger(__name__)

RANGES_FILE = "calibration.json"
Progress = Callable[[str], None]


class CalibrationData:
    """Input dicts for calibration from ``path``: one ``.npz`` file, or a directory of them (sorted by name).

    Each file holds one array per model input, named like the inputs (a lone ``arr_0`` is accepted for a model
    with one input). An array of the input's shape is one sample; ``[N, *shape]``, or ``[N, ...]`` for an input
    whose batch dimension is 1, holds N samples. Iterating yields one dict per sample, in order.

    Raises (on ``check()`` or iteration)
    ------
    InputError
        For a missing path, an empty directory, an unreadable file, wrong input names, shapes or dtypes, NaN or
        Inf values, or no samples at all.
    """

    def __init__(
        self, path: str | Path, specs: list[TensorSpec], kind: str = "calibration data", extra: tuple[str, ...] = ()
    ):
        self.path = Path(path)
        self.specs = specs
        self.kind = kind  # how errors name the set
        self.extra = extra  # arrays besides the inputs that the files may hold (an eval set's labels)
        self.files = self._files()

    def _files(self) -> list[Path]:
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.suffix == ".npz" and p.is_file())
            if not files:
                raise InputError(f"{self.kind} {self.path}: the directory holds no .npz files")
            return files
        if not self.path.is_file():
            raise InputError(f"{self.kind} {self.path}: no such file or directory")
        return [self.path]

    def check(self) -> int:
        """Read and check every file; return the number of samples."""
        count = sum(len(samples) for samples in map(self._read, self.files))
        if count == 0:
            raise InputError(f"{self.kind} {self.path}: the set is empty (0 samples); give at least one")
        return count

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        count = 0
        for path in self.files:
            for sample in self._read(path):
                count += 1
                yield sample
        if count == 0:
            raise InputError(f"{self.kind} {self.path}: the set is empty (0 samples); give at least one")

    def read_with_extra(self) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """Every sample, and each ``extra`` array that the files hold, concatenated in file order; every file is
        read once."""
        samples: list[dict[str, np.ndarray]] = []
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.extra}
        for path in self.files:
            arrays = _read_npz(path, self.kind)
            samples += self._samples(path, arrays)
            for name in self.extra:
                if name in arrays:
                    parts[name].append(arrays[name])
        if not samples:
            raise InputError(f"{self.kind} {self.path}: the set is empty (0 samples); give at least one")
        return samples, {name: np.concatenate(arrays) for name, arrays in parts.items() if arrays}

    def _read(self, path: Path) -> list[dict[str, np.ndarray]]:
        return self._samples(path, _read_npz(path, self.kind))

    def _samples(self, path: Path, arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """The samples of one file's ``arrays`` (its ``extra`` arrays left out), checked against the inputs."""
        arrays = {name: array for name, array in arrays.items() if name not in self.extra}
        if len(self.specs) == 1 and list(arrays) == ["arr_0"]:
            arrays = {self.specs[0].name: arrays["arr_0"]}
        names = [spec.name for spec in self.specs]
        if sorted(arrays) != sorted(names):
            raise InputError(
                f"{self.kind} {path}: holds arrays {sorted(arrays)}, the model's inputs are {names}; name "
                "one array per input"
            )
        batches = {spec.name: _as_batch(path, spec, arrays[spec.name], self.kind) for spec in self.specs}
        sizes = {name: len(batch) for name, batch in batches.items()}
        if len(set(sizes.values())) > 1:
            raise InputError(f"{self.kind} {path}: inputs hold different numbers of samples {sizes}")
        count = next(iter(sizes.values()))
        return [{name: np.ascontiguousarray(batch[i]) for name, batch in batches.items()} for i in range(count)]


def _read_npz(path: Path, kind: str = "calibration data") -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise InputError(f"{kind} {path}: not a readable .npz archive ({err})") from err


def _as_batch(path: Path, spec: TensorSpec, array: np.ndarray, kind: str = "calibration data") -> np.ndarray:
    """``array`` as ``[N, *spec.shape]``; InputError for a shape, dtype or value that does not fit."""
    shape = tuple(array.shape)
    if shape == spec.shape:
        batch = array[None]
    elif shape[1:] == spec.shape:
        batch = array
    elif spec.shape and spec.shape[0] == 1 and len(shape) == len(spec.shape) and shape[1:] == spec.shape[1:]:
        batch = array[:, None]
    else:
        rest = list(spec.shape[1:]) if spec.shape and spec.shape[0] == 1 else list(spec.shape)
        raise InputError(
            f"{kind} {path}: input {spec.name!r} has shape {list(shape)}, expected {list(spec.shape)} "
            f"or a batch [N, {', '.join(map(str, rest))}]"
        )
    if str(array.dtype) != spec.dtype:
        raise InputError(f"{kind} {path}: input {spec.name!r} has dtype {array.dtype}, expected {spec.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.argmax(~np.isfinite(batch).reshape(len(batch), -1).all(axis=1)))
        raise InputError(f"{kind} {path}: input {spec.name!r} holds NaN or Inf (sample {bad})")
    return batch


def collect(imported: ImportedModel, data: CalibrationData, progress: Progress | None = None) -> CalibrationStats:
    """Run the float model on this host over ``data``; return the statistics of every layer's input."""
    from tvm import relax

    from edgetvm.pipeline.build import compile_module
    from edgetvm.targets import resolve_target

    keys, mod = _expose_layer_inputs(imported.mod)
    samples = data.check()
    if progress:
        progress(f"calibrating {len(keys)} layers on {samples} samples")
    host = resolve_target("x86")
    executable = compile_module(_with_mod(imported, mod), host)
    import tvm

    vm = relax.VirtualMachine(executable, tvm.cpu())
    stats = {key: LayerHistogram() for key in keys}
    count = 0
    for sample in data:
        args = [tvm.runtime.tensor(sample[spec.name]) for spec in imported.inputs]
        result = vm["main"](*args)
        exposed = [result[i] for i in range(len(result) - len(keys), len(result))]
        for key, tensor in zip(keys, exposed, strict=True):
            values = tensor.numpy()
            if not np.isfinite(values).all():  # finite inputs whose activations overflow float32
                raise InputError(
                    f"{data.kind} {data.path}: sample {count}: the float model's activations reach NaN or Inf at "
                    f"layer {key}; calibrate on inputs in the range the model is used with"
                )
            stats[key].update(values)
        count += 1
    return CalibrationStats(stats, count)


def compute(
    stats: CalibrationStats, method: CalibrationMethod, model_sha256: str, percentile: float | None = None
) -> CalibrationRanges:
    """Ranges of every layer input from ``stats`` by ``method`` (``percentile`` only for PERCENTILE)."""
    if method is CalibrationMethod.PERCENTILE and percentile is None:
        percentile = DEFAULT_PERCENTILE
    if method is not CalibrationMethod.PERCENTILE:
        percentile = None
    if percentile is not None and not 0 < percentile <= 100:
        raise InputError(f"--calib-percentile must be in (0, 100], got {percentile}")
    layers = {
        key: LayerRange(hist.min, hist.max, threshold(hist, method, percentile or DEFAULT_PERCENTILE))
        for key, hist in stats.layers.items()
    }
    return CalibrationRanges(method, stats.samples, layers, model_sha256, percentile)


def calibrate(
    imported: ImportedModel,
    data_path: str | Path,
    method: CalibrationMethod,
    percentile: float | None = None,
    progress: Progress | None = None,
) -> CalibrationRanges:
    """``collect`` over the data at ``data_path``, then ``compute`` with ``method``."""
    stats = collect(imported, CalibrationData(data_path, imported.inputs), progress)
    ranges = compute(stats, method, imported.sha256, percentile)
    log.info("calibrated %d layers of %s on %d samples (%s)", len(ranges.layers), imported.path, stats.samples, method)
    return ranges


def load_ranges(path: str | Path, imported: ImportedModel) -> CalibrationRanges:
    """Ranges from an earlier ``calibration.json``, checked to belong to ``imported``'s model file.

    Raises
    ------
    InputError
        When the file cannot be read or was computed for another model.
    """
    ranges = CalibrationRanges.load(path)
    if ranges.model_sha256 != imported.sha256:
        raise InputError(
            f"calibration ranges {path} were computed for another model (sha256 {ranges.model_sha256[:12]}, this "
            f"one is {imported.sha256[:12]}); calibrate with --calib instead"
        )
    return ranges


def _with_mod(imported: ImportedModel, mod) -> ImportedModel:
    return dataclasses.replace(imported, mod=mod)


def _expose_layer_inputs(mod) -> tuple[list[str], object]:
    """The layer keys and ``mod`` with every layer's input exposed (``ExposeLayerOutputs(with_inputs=True)``: the
    inputs are the last ``len(keys)`` results of ``main``).

    Constants are folded first, as the quantization pipelines do before keying layers, so that a weight written
    as ``permute_dims(constant)`` is a layer here too.
    """
    from tvm import relax

    from edgetvm.pipeline.passes.expose_layer_outputs import ExposeLayerOutputs
    from edgetvm.pipeline.passes.quant_layers import quant_layers

    mod = relax.transform.FoldConstant()(mod)
    keys = [layer.key for layer in quant_layers(mod)]
    if not keys:
        raise InputError("calibration: the model has no conv2d or matmul with constant weights to quantize")
    return keys, ExposeLayerOutputs(with_inputs=True)(mod)


@dataclass(frozen=True)
class CalibrationOptions:
    """The calibration a static scheme is built with (``--calib``, ``--calib-method``, ``--calib-percentile``,
    ``--calib-ranges``); every field None means none was asked for."""

    data: str | Path | None = None
    method: str | None = None
    percentile: float | None = None
    ranges: str | Path | None = None

    @property
    def given(self) -> list[str]:
        flags = ("--calib", "--calib-method", "--calib-percentile", "--calib-ranges")
        values = (self.data, self.method, self.percentile, self.ranges)
        return [flag for flag, value in zip(flags, values, strict=True) if value is not None]

    def for_scheme(self, scheme: QuantScheme) -> CalibrationOptions:
        """These options for a static scheme, none for another: what a run that builds several schemes with one
        calibration (``bench``) gives each (``prepare_calibration`` refuses options for a non-static scheme)."""
        return self if scheme.activation_mode == "static" else CalibrationOptions()


def prepare_calibration(
    imported: ImportedModel, scheme: QuantScheme, options: CalibrationOptions, progress: Progress | None = None
) -> tuple[QuantScheme, CalibrationRanges | None]:
    """The scheme as it will be built (its ``calibration`` the method actually used) and its ranges.

    Static schemes calibrate on ``options.data`` or read ``options.ranges``; other schemes take no calibration
    options and get None.

    Raises
    ------
    InputError
        For calibration options given to a scheme without static activations, missing or conflicting options,
        and bad calibration data or ranges.
    """
    if scheme.activation_mode != "static":
        if options.given:
            raise InputError(
                f"{', '.join(options.given)}: only static schemes (w8a8-static) are calibrated; {scheme.name} "
                "takes no calibration"
            )
        return scheme, None
    if options.data is not None and options.ranges is not None:
        raise InputError("give either --calib (data to calibrate on) or --calib-ranges (ranges computed before)")
    if options.ranges is not None:
        if options.method is not None or options.percentile is not None:
            raise InputError("--calib-method and --calib-percentile apply to --calib, not to --calib-ranges")
        ranges = load_ranges(options.ranges, imported)
        return dataclasses.replace(scheme, calibration=ranges.method.value), ranges
    if options.data is None:
        raise InputError(
            f"quantization scheme {scheme.name!r} needs calibration data: --calib DATA.npz (or a directory of "
            ".npz files, one array per model input), or --calib-ranges calibration.json from an earlier build"
        )
    method = CalibrationMethod.parse(options.method or scheme.calibration)
    if options.percentile is not None and method is not CalibrationMethod.PERCENTILE:
        raise InputError(f"--calib-percentile applies to --calib-method percentile, not {method.value}")
    ranges = calibrate(imported, options.data, method, options.percentile, progress)
    return dataclasses.replace(scheme, calibration=method.value), ranges


def quantization_manifest(
    scheme: QuantScheme, ranges: CalibrationRanges | None, int8_depthwise: bool = True
) -> dict | str:
    """``manifest.json``'s ``quantization``: the scheme's fields, for static schemes where the ranges are, and
    ``int8_depthwise: false`` when the target keeps depthwise convs float (``TargetPreset.int8_depthwise``)."""
    entry = scheme.manifest_entry()
    if not int8_depthwise and isinstance(entry, dict):
        entry = {**entry, "int8_depthwise": False}
    if ranges is not None:
        entry = {
            **entry,
            "calibration_ranges": RANGES_FILE,
            "calibration_samples": ranges.samples,
            "calibration_percentile": ranges.percentile,
        }
    return entry


def ranges_files(ranges: CalibrationRanges | None) -> dict[str, str]:
    """The files a build writes beside its library for ``ranges`` (``calibration.json``), by name."""
    if ranges is None:
        return {}
    return {RANGES_FILE: json.dumps(ranges.to_json(), indent=2) + "\n"}
