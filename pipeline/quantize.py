"""Quantize: apply a scheme's pass pipeline to an imported model's Relax module."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from edgetvm.errors import BuildError, InputError, last_line
from edgetvm.pipeline.calibrate import CalibrationOptions, prepare_calibration
from edgetvm.pipeline.calibration_stats import CalibrationRanges
from edgetvm.pipeline.ingest import ImportedModel
from edgetvm.pipeline.schemes import QuantScheme
from edgetvm.targets import TargetPreset

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """What a scheme's pass pipeline is built with besides the scheme itself."""

    scheme: QuantScheme
    keep_float: frozenset[str] = frozenset()
    calibration: CalibrationRanges | None = None


def _w8a8_dynamic_pipeline(options: PipelineOptions) -> list:
    import tvm

    from edgetvm.pipeline.passes import DynamicGatedInput, DynamicQuantize, DynamicRequantize

    return [
        # 1. Fold constant subgraphs (e.g. a transposed Gemm weight) so that weights reach conv2d/matmul as constants.
        tvm.relax.transform.FoldConstant(),
        # 2. conv2d / matmul with constant weights -> int8 x int8 -> int32, dequantized to float32.
        DynamicQuantize(
            options.keep_float,
            per_tensor_weights=options.scheme.weight_granularity == "per-tensor",
            per_row=options.scheme.activation_granularity == "per-row",
        ),
        # 3. Batch norms become multiply-adds with constants (folded), which DynamicRequantize can see through.
        tvm.relax.transform.DecomposeOpsForInference(),
        tvm.relax.transform.FoldConstant(),
        # 4. Between consecutive layers: int32 quantized straight to int8 with the run-time scale.
        DynamicRequantize(),
        # 5. A layer input gated per channel (squeeze-excite) is scaled and quantized from the map before the gates.
        DynamicGatedInput(),
        # 6. Quantize the (now int8) weights once at build time: fold what depends only on constants.
        tvm.relax.transform.FoldConstant(),
    ]


def _w8a8_static_pipeline(options: PipelineOptions) -> list:
    import tvm

    from edgetvm.pipeline.passes import Requantize, StaticQuantize

    if options.calibration is None:
        raise InputError(
            f"quantization scheme {options.scheme.name!r} needs calibration: give --calib DATA.npz (or a directory "
            "of .npz files) or --calib-ranges calibration.json"
        )
    return [
        # 1. Fold constant subgraphs so that weights reach conv2d/matmul as constants (the layer keys of calibration).
        tvm.relax.transform.FoldConstant(),
        # 2. conv2d / matmul -> int8 x int8 -> int32 with the calibrated constant activation scales.
        StaticQuantize(
            options.calibration,
            options.keep_float,
            per_tensor_weights=options.scheme.weight_granularity == "per-tensor",
        ),
        # 3. Between consecutive layers: int32 rescaled straight to int8, pooling and reshapes on int8.
        Requantize(),
        # 4. Fold what depends only on constants (the quantized weights).
        tvm.relax.transform.FoldConstant(),
    ]


# One pass pipeline per scheme name; "none" has no passes. A new scheme adds its entry here.
PIPELINES = {
    "none": lambda _options: [],
    "w8a8-dynamic": _w8a8_dynamic_pipeline,
    "w8a8-static": _w8a8_static_pipeline,
}


def quantize(
    imported: ImportedModel,
    scheme: QuantScheme,
    *,
    keep_float: frozenset[str] = frozenset(),
    calibration: CalibrationRanges | None = None,
    int8_depthwise: bool = True,
) -> ImportedModel:
    """Return ``imported`` with its module rewritten by ``scheme``'s pass pipeline.

    ``keep_float`` names layers (``quant_layers`` keys) left in float; ``calibration`` holds the activation ranges
    static schemes need (``pipeline.calibrate``). Besides those, the scheme's narrow convs (``min_input_channels``),
    small layers (``min_macs``) and layers that use each input value for few multiply-adds (``min_macs_per_input``)
    stay float, and so do depthwise convs without ``int8_depthwise`` (the target's ``TargetPreset.int8_depthwise``).
    A narrow conv whose kernel columns give it enough channels is unfolded into one that has them first
    (``passes.unfold_narrow_conv``), and quantized.

    Raises
    ------
    InputError
        When the scheme is registered but has no pass pipeline yet, a static scheme has no calibration, or the
        model arrived quantized.
    BuildError
        When a pass fails on the module.
    """
    if imported.quantization and not scheme.is_float:
        raise InputError(
            f"model {imported.path} is already quantized ({imported.quantization['source']}); "
            f"compile it with --quantize none, or give its float model to --quantize {scheme.name}"
        )
    if scheme.name not in PIPELINES:
        raise InputError(
            f"quantization scheme {scheme.name!r} has no pass pipeline yet; implemented: {', '.join(PIPELINES)}"
        )
    if scheme.is_float:
        return imported
    import tvm

    from edgetvm.pipeline.passes.quant_layers import (
        depthwise_layers,
        low_reuse_layers,
        narrow_layers,
        quant_layers,
        small_layers,
    )
    from edgetvm.pipeline.passes.unfold_narrow_conv import UnfoldNarrowConv

    folded = tvm.relax.transform.FoldConstant()(imported.mod)  # weights reach conv2d / matmul as constants
    if scheme.min_input_channels:
        folded = UnfoldNarrowConv(scheme.min_input_channels, skip=frozenset(keep_float))(folded)
    narrow = narrow_layers(folded, scheme.min_input_channels)
    if narrow:
        log.info(
            "%s: %s stay float (fewer than %d input channels)",
            scheme.name,
            ", ".join(narrow),
            scheme.min_input_channels,
        )
    small = small_layers(folded, scheme.min_macs)
    if small:
        log.info("%s: %d layer(s) stay float (fewer than %d multiply-adds)", scheme.name, len(small), scheme.min_macs)
    low_reuse = [key for key in low_reuse_layers(folded, scheme.min_macs_per_input) if key not in small]
    if low_reuse:
        log.info(
            "%s: %d layer(s) stay float (fewer than %d multiply-adds per input value)",
            scheme.name,
            len(low_reuse),
            scheme.min_macs_per_input,
        )
    depthwise = [] if int8_depthwise else depthwise_layers(folded)
    if depthwise:
        log.info(
            "%s: %d depthwise conv(s) stay float (the target has no faster int8 depthwise)", scheme.name, len(depthwise)
        )
    keep_float = frozenset(keep_float).union(narrow, small, low_reuse, depthwise)
    passes = PIPELINES[scheme.name](PipelineOptions(scheme, keep_float, calibration))
    quantized = [layer.key for layer in quant_layers(folded) if layer.key not in keep_float]
    if not quantized:
        log.warning(
            "%s: every layer of %s stays float (see -v for why); the build runs the float model",
            scheme.name,
            imported.path,
        )
    if calibration is not None:  # before the passes: TVM turns what a Python pass raises into a RuntimeError
        calibration.check_covers(quantized)

    try:
        mod = tvm.transform.Sequential(passes, name=f"quantize-{scheme.name}")(folded)
    except Exception as err:  # TVM raises TVMError and friends from inside passes
        raise BuildError(f"quantizing {imported.path} with {scheme.name} failed: {last_line(err)}") from err
    log.info("quantized %s with %s", imported.path, scheme.name)
    return dataclasses.replace(imported, mod=mod)


def scheme_for_target(scheme: QuantScheme, target: TargetPreset) -> QuantScheme:
    """``scheme`` as it quantizes for ``target``: with the target's ``int8_min_input_channels`` (static schemes) or
    ``int8_min_input_channels_dynamic`` (dynamic ones) when it sets one (the manifest records the scheme so, and
    ``compare --per-layer`` rebuilds it from there).

    The two differ because quantizing a narrow conv at run time costs more than its int8 kernel may gain: such a
    conv is near a network's float first layer, and a dynamic one adds its input's ``max|x|`` and quantize passes
    and the scale kernels of its output's requantize (the trained CNN's 8 -> 16 conv in the pair kernel: 9 kernel
    launches became 12, and its ``w8a8-dynamic`` build went from 0.99x to 0.90x of float, where ``w8a8-static``
    went from 0.97x to 1.09x).
    """
    channels = {"static": target.int8_min_input_channels, "dynamic": target.int8_min_input_channels_dynamic}.get(
        scheme.activation_mode
    )
    if channels is None or channels == scheme.min_input_channels:
        return scheme
    return dataclasses.replace(scheme, min_input_channels=channels)


def prepare_for_target(
    imported: ImportedModel,
    scheme: QuantScheme,
    target: TargetPreset,
    calibration: CalibrationOptions,
    progress: Progress | None = None,
) -> tuple[ImportedModel, QuantScheme, CalibrationRanges | None]:
    """``imported`` as ``compile --quantize SCHEME`` builds it for ``target``: calibrated (static schemes, with
    ``calibration``) and quantized, with the scheme as built (its calibration method the one used) and its ranges.

    ``tune`` and ``bench`` start from it, so that they tune and time the functions ``compile`` builds: an int8
    kernel tuned for a model quantized differently (another depthwise policy, other ranges) is another function.

    Raises
    ------
    InputError
        Bad calibration options or data (``prepare_calibration``), or a model that arrived quantized.
    BuildError
        When a pass fails on the module.
    """
    scheme, ranges = prepare_calibration(imported, scheme_for_target(scheme, target), calibration, progress)
    if progress and not scheme.is_float:
        progress(f"quantizing with {scheme.name}")
    quantized = quantize(imported, scheme, calibration=ranges, int8_depthwise=target.int8_depthwise)
    return quantized, scheme, ranges
