"""Per-layer accuracy of a quantized model: how far each quantizable layer's output is from float.

``LayerProbe`` builds the float model for this host once, with every layer's output and input exposed
(``ExposeLayerOutputs``), and then, for a quantization scheme and a set of layers kept in float, the same module
quantized. Both run on the same inputs; for each layer (keyed as in ``passes/quant_layers.py``):

- ``sqnr_db`` = ``10 log10(sum(ref^2) / sum((q - ref)^2))`` of its output, over all samples: the error that
  reached this point of the network, what this layer added included;
- ``input_sqnr_db``: the same of its data input (the error it received);
- ``added_noise``: the noise-to-signal power ratio the layer added, ``10^(-sqnr/10) - 10^(-input_sqnr/10)``,
  which ranks the layers by their own sensitivity (mixed precision keeps the highest in float first).

The end metrics (top-1 agreement, cosine, max abs error per model output) are ``compare``'s, against the
original model run by onnxruntime / tflite-runtime, and the accuracy drop is the build gates' (``gates.py``).

Every build here is for this host (x86) even when the artifact is for a board: the quantized module's integer
arithmetic and float rescaling are the same on every target, so the host measures the board's accuracy.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetvm.cache import write_atomic
from edgetvm.errors import InputError
from edgetvm.pipeline.compare import OutputAgreement, compare_outputs
from edgetvm.pipeline.gates import accuracy_drop
from edgetvm.pipeline.ingest import ImportedModel
from edgetvm.pipeline.inputs import check_inputs, random_inputs, read_npz
from edgetvm.pipeline.passes.quant_layers import QuantLayer, quant_layers
from edgetvm.pipeline.schemes import QuantScheme
from edgetvm.pipeline.tensor_spec import TensorSpec


def sqnr_db(reference: Iterable[np.ndarray], actual: Iterable[np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio in dB of ``actual`` against ``reference`` (pairs summed together).

    ``inf`` when they are equal, ``-inf`` when the reference is all zeros and ``actual`` is not.
    """
    signal, noise = _powers(reference, actual)
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _powers(reference: Iterable[np.ndarray], actual: Iterable[np.ndarray]) -> tuple[float, float]:
    signal = noise = 0.0
    for ref, out in zip(reference, actual, strict=True):
        ref = np.asarray(ref, dtype=np.float64)
        signal += float(np.sum(ref * ref))
        noise += float(np.sum((np.asarray(out, dtype=np.float64) - ref) ** 2))
    return signal, noise


def noise_ratio(db: float) -> float:
    """The noise-to-signal power ratio of an SQNR in dB (0 for ``inf``)."""
    return 10.0 ** (-db / 10.0) if db != -math.inf else math.inf


@dataclass(frozen=True)
class LayerAccuracy:
    """One layer's output against float (see the module docstring)."""

    key: str
    op: str
    weight_shape: tuple[int, ...]
    sqnr_db: float
    input_sqnr_db: float
    kept_float: bool

    @property
    def added_noise(self) -> float:
        return noise_ratio(self.sqnr_db) - noise_ratio(self.input_sqnr_db)

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "op": self.op,
            "weight_shape": list(self.weight_shape),
            "sqnr_db": finite_or_none(self.sqnr_db),
            "input_sqnr_db": finite_or_none(self.input_sqnr_db),
            "added_noise": finite_or_none(self.added_noise),
            "kept_float": self.kept_float,
        }


def finite_or_none(value: float) -> float | None:
    """JSON has no infinity: ``null`` stands for "no error at all" (SQNR ``inf``)."""
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class LayerReport:
    """Every layer of one quantized build against the float build, worst SQNR first, and the end metrics."""

    model: str
    scheme: str
    keep_float: tuple[str, ...]
    samples: int
    reference_runtime: str
    layers: tuple[LayerAccuracy, ...]
    outputs: tuple[OutputAgreement, ...]  # the quantized build against the reference runtime
    float_outputs: tuple[OutputAgreement, ...]  # the float build against the reference runtime

    @property
    def accuracy_drop(self) -> float:
        """The build gates' drop (percentage points, worst output) of the quantized build."""
        return accuracy_drop([o.to_json() for o in self.outputs])

    @property
    def float_accuracy_drop(self) -> float:
        """The same of the float build: no set of float layers can do better."""
        return accuracy_drop([o.to_json() for o in self.float_outputs])

    def by_sensitivity(self) -> list[LayerAccuracy]:
        """The quantized layers, the one that adds the most noise first."""
        return rank_by_sensitivity(self.layers)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "scheme": self.scheme,
            "keep_float": list(self.keep_float),
            "samples": self.samples,
            "reference_runtime": self.reference_runtime,
            "measured_on": "host (x86) builds of the float and the quantized module",
            "accuracy_drop": self.accuracy_drop,
            "float_accuracy_drop": self.float_accuracy_drop,
            "outputs": [o.to_json() for o in self.outputs],
            "float_outputs": [o.to_json() for o in self.float_outputs],
            "layers": [layer.to_json() for layer in self.layers],
        }


def sort_worst_first(layers: Iterable[LayerAccuracy]) -> list[LayerAccuracy]:
    """Lowest SQNR first; ties (and layers without error) keep binding order."""
    return sorted(layers, key=lambda layer: layer.sqnr_db)


def rank_by_sensitivity(layers: Iterable[LayerAccuracy]) -> list[LayerAccuracy]:
    """The layers not kept in float, the largest added noise first."""
    return sorted((layer for layer in layers if not layer.kept_float), key=lambda layer: -layer.added_noise)


def model_layers(mod) -> list[QuantLayer]:
    """The layers a quantization pipeline sees: ``quant_layers`` after constant folding (an importer's transposed
    weights become constants only then: BlazeFace has 37 layers after folding, none before)."""
    import tvm

    return quant_layers(tvm.relax.transform.FoldConstant()(mod))


def check_keep_float(imported: ImportedModel, keep_float: Iterable[str]) -> frozenset[str]:
    """``keep_float`` as a frozenset, InputError if a key is not a layer of the model."""
    keep_float = frozenset(keep_float)
    known = [layer.key for layer in model_layers(imported.mod)]
    unknown = sorted(keep_float - set(known))
    if unknown:
        raise InputError(
            f"keep_float: {', '.join(unknown)} not among the model's layers ({', '.join(known) or 'none'})"
        )
    return keep_float


@dataclass
class _Run:
    """What one exposed build returned for every sample: model outputs, layer outputs, layer inputs."""

    outputs: list[list[np.ndarray]]
    layer_outputs: list[list[np.ndarray]]  # [layer][sample]
    layer_inputs: list[list[np.ndarray]]


class LayerProbe:
    """The float model exposed and built for this host once; ``evaluate`` builds and measures quantized variants.

    Parameters
    ----------
    imported : ImportedModel
        The float model as imported (not quantized).
    scheme : QuantScheme
        The scheme whose pass pipeline ``evaluate`` applies.
    samples : list of dict
        Model inputs (see ``load_samples``); metrics are over all of them.
    reference : path, optional
        The model the reference runtime runs (default: ``imported.path``).
    quantizer : callable, optional
        ``quantizer(imported, scheme, keep_float=...)`` (default ``pipeline.quantize.quantize``).
    """

    def __init__(
        self,
        imported: ImportedModel,
        scheme: QuantScheme,
        samples: list[dict[str, np.ndarray]],
        reference: str | Path | None = None,
        quantizer: Callable | None = None,
    ):
        import tvm

        from edgetvm.pipeline.passes.expose_layer_outputs import ExposeLayerOutputs
        from edgetvm.pipeline.quantize import quantize
        from edgetvm.pipeline.reference import ReferenceModel

        if not samples:
            raise InputError("per-layer accuracy needs at least one input sample")
        self.imported = imported
        self.scheme = scheme
        self.samples = samples
        self.layers = model_layers(imported.mod)
        self._quantize = quantizer or quantize
        expose = tvm.transform.Sequential([tvm.relax.transform.FoldConstant(), ExposeLayerOutputs(with_inputs=True)])
        self.exposed = dataclasses.replace(imported, mod=expose(imported.mod))
        reference_model = ReferenceModel(reference or imported.path)
        self.reference_runtime = reference_model.runtime
        self.expected = [reference_model.run(sample) for sample in samples]
        self.float_run = self._build_and_run(self.exposed)

    @property
    def float_accuracy_drop(self) -> float:
        """The float build's drop against the reference: the best any set of float layers can reach."""
        return accuracy_drop([o.to_json() for o in self._agreement(self.float_run.outputs)])

    def evaluate(self, keep_float: Iterable[str] = frozenset()) -> LayerReport:
        """Quantize with ``keep_float`` left in float, build for this host, and compare with the float build."""
        keep_float = frozenset(keep_float)
        quantized = self._quantize(self.exposed, self.scheme, keep_float=keep_float)
        run = self._build_and_run(quantized)
        layers = [
            LayerAccuracy(
                layer.key,
                layer.op,
                layer.weight_shape,
                sqnr_db(self.float_run.layer_outputs[i], run.layer_outputs[i]),
                sqnr_db(self.float_run.layer_inputs[i], run.layer_inputs[i]),
                layer.key in keep_float,
            )
            for i, layer in enumerate(self.layers)
        ]
        return LayerReport(
            model=str(self.imported.path),
            scheme=self.scheme.name,
            keep_float=tuple(layer.key for layer in self.layers if layer.key in keep_float),
            samples=len(self.samples),
            reference_runtime=self.reference_runtime,
            layers=tuple(sort_worst_first(layers)),
            outputs=tuple(self._agreement(run.outputs)),
            float_outputs=tuple(self._agreement(self.float_run.outputs)),
        )

    def _agreement(self, outputs: list[list[np.ndarray]]) -> list[OutputAgreement]:
        """Per model output, all samples stacked (top-1 agreement counts every sample's rows)."""
        names = [spec.name for spec in self.imported.outputs]
        stacked = [np.stack([sample[i] for sample in outputs]) for i in range(len(names))]
        expected = [np.stack([sample[i] for sample in self.expected]) for i in range(len(names))]
        return compare_outputs(names, stacked, expected)

    def _build_and_run(self, exposed: ImportedModel) -> _Run:
        import tvm
        from tvm import relax

        from edgetvm.pipeline.build import compile_module
        from edgetvm.pipeline.run_local import flatten_tensors
        from edgetvm.targets import resolve_target

        host = resolve_target("x86")
        os.environ.setdefault("TVM_NUM_THREADS", str(host.threads))  # as LocalRunner: the target's cores
        vm = relax.VirtualMachine(compile_module(exposed, host), tvm.cpu())
        n_outputs, n_layers = len(self.imported.outputs), len(self.layers)
        run = _Run([], [[] for _ in range(n_layers)], [[] for _ in range(n_layers)])
        for sample in self.samples:
            args = [tvm.runtime.tensor(sample[spec.name]) for spec in self.imported.inputs]
            flat = [tensor.numpy() for tensor in flatten_tensors(vm["main"](*args))]
            if len(flat) != n_outputs + 2 * n_layers:
                raise RuntimeError(f"exposed build returned {len(flat)} tensors, expected {n_outputs + 2 * n_layers}")
            run.outputs.append(flat[:n_outputs])
            for i in range(n_layers):
                run.layer_outputs[i].append(flat[n_outputs + i])
                run.layer_inputs[i].append(flat[n_outputs + n_layers + i])
        return run


def layer_report_for_package(
    package, samples: list[dict[str, np.ndarray]], reference: str | Path | None = None
) -> LayerReport:
    """The per-layer report of a quantized artifact: its model re-imported from the manifest, built for this host
    float and quantized with the manifest's scheme and ``keep_float`` (any target: see the module docstring).

    Raises
    ------
    InputError
        When the artifact is not quantized, or its model file is gone or changed.
    """
    import functools

    from edgetvm.pipeline.ingest import file_sha256, load_model
    from edgetvm.pipeline.quantize import quantize
    from edgetvm.pipeline.schemes import scheme_as_built

    quantization = package.manifest.get("quantization", "none")
    if not isinstance(quantization, dict) or quantization.get("name", "none") == "none":
        raise InputError(
            f"{package.directory}: not a quantized artifact, so no layer differs from float; compile with --quantize"
        )
    model = package.manifest["model"]
    path = Path(model["path"])
    if not path.is_file() or file_sha256(path) != model["sha256"]:
        raise InputError(f"{package.directory}: its model {path} is missing or changed since the build; recompile it")
    imported = load_model(path, {name: tuple(shape) for name, shape in model["input_shapes"].items()})
    keep_float = check_keep_float(imported, quantization.get("keep_float", ()))
    ranges = None
    if "calibration_ranges" in quantization:  # static schemes: the artifact's own ranges
        from edgetvm.pipeline.calibrate import load_ranges

        ranges = load_ranges(Path(package.directory) / quantization["calibration_ranges"], imported)
    # The artifact's layers exactly: its target may have kept depthwise convs float (TargetPreset.int8_depthwise).
    quantizer = functools.partial(
        quantize, calibration=ranges, int8_depthwise=bool(quantization.get("int8_depthwise", True))
    )
    # The scheme as the manifest records it: an artifact of an older edgetvm may have quantized more layers.
    probe = LayerProbe(imported, scheme_as_built(quantization), samples, reference, quantizer)
    return probe.evaluate(keep_float)


def load_samples(
    path: str | Path | None, specs: list[TensorSpec], seed: int = 0, count: int | None = None
) -> list[dict[str, np.ndarray]]:
    """Input samples: from an ``.npz`` or ``count`` random ones (``seed``, ``seed + 1``, ...; default 1).

    An ``.npz`` holds either one sample (arrays of the inputs' shapes) or several stacked on a new leading axis,
    or, for inputs of batch 1, concatenated along the batch axis (a data set such as the trained CNN's eval set,
    ``image`` of shape ``(1000, 1, 28, 28)``). ``count`` then keeps the first ``count`` samples.
    """
    if count is not None and count < 1:
        raise InputError(f"--samples {count}: give at least 1")
    if path is None:
        return [random_inputs(specs, seed + i) for i in range(count or 1)]
    arrays = read_npz(path)
    if len(specs) == 1 and list(arrays) == ["arr_0"]:
        arrays = {specs[0].name: arrays["arr_0"]}
    if all(spec.name in arrays and arrays[spec.name].shape == spec.shape for spec in specs):
        return [check_inputs(arrays, specs, str(path))]
    sizes = {spec.name: _stacked_count(arrays.get(spec.name), spec) for spec in specs}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise InputError(
            f"inputs {path}: expected one sample {[s.describe() for s in specs]} or the same number of samples "
            f"stacked on a leading axis for every input; the file holds "
            f"{ {name: list(array.shape) for name, array in arrays.items()} }"
        )
    total = next(iter(sizes.values()))
    samples = []
    for index in range(min(total, count or total)):
        sample = {spec.name: _sample(arrays[spec.name], spec, index) for spec in specs}
        samples.append(check_inputs(sample, specs, f"{path} sample {index}"))
    return samples


def _stacked_count(array: np.ndarray | None, spec: TensorSpec) -> int | None:
    if array is None:
        return None
    if array.shape[1:] == spec.shape:
        return array.shape[0]
    if spec.shape and spec.shape[0] == 1 and array.ndim == len(spec.shape) and array.shape[1:] == spec.shape[1:]:
        return array.shape[0]
    return None


def _sample(array: np.ndarray, spec: TensorSpec, index: int) -> np.ndarray:
    return array[index] if array.shape[1:] == spec.shape else array[index : index + 1]


def write_sqnr_chart(report: LayerReport, path: str | Path) -> None:
    """A PNG bar chart of every layer's SQNR, worst first, kept-float layers marked; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    layers = list(report.layers)
    finite = [layer.sqnr_db for layer in layers if math.isfinite(layer.sqnr_db)]
    ceiling = (max(finite) if finite else 0.0) + 10.0  # where "no error" bars end
    values = [layer.sqnr_db if math.isfinite(layer.sqnr_db) else ceiling for layer in layers]
    colors = ["tab:green" if layer.kept_float else "tab:blue" for layer in layers]
    figure = Figure(figsize=(max(6.0, 0.28 * len(layers) + 2.0), 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.bar(range(len(layers)), values, color=colors)
    axes.set_xticks(range(len(layers)), [layer.key for layer in layers], rotation=90, fontsize=7)
    axes.set_ylabel("SQNR of the layer's output (dB)")
    kept = f", {len(report.keep_float)} kept in float (green)" if report.keep_float else ""
    axes.set_title(
        f"{Path(report.model).name} {report.scheme}: per-layer SQNR, worst first{kept}\n"
        f"accuracy drop {report.accuracy_drop:.3f} points, {report.samples} sample(s)",
        fontsize=9,
    )
    figure.tight_layout()
    write_atomic(path, lambda f: figure.savefig(f, format="png", dpi=100))
