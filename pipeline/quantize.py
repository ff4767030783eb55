"""Quantize: apply a scheme's pass pipeline to an imported model's Relax module."""

from __future__ import annotations

import dataclasses
import logging

from edgetvm.errors import BuildError, InputError, last_line
from edgetvm.pipeline.ingest import ImportedModel
from edgetvm.pipeline.schemes import QuantScheme

log = logging.getLogger(__name__)


def _w8a8_dynamic_pipeline() -> list:
    import tvm

    from edgetvm.pipeline.passes import DynamicQuantize

    return [
        # 1. Fold constant subgraphs (e.g. a transposed Gemm weight) so that weights reach conv2d/matmul as constants.
        tvm.relax.transform.FoldConstant(),
        # 2. conv2d / matmul with constant weights -> int8 x int8 -> int32, dequantized to float32.
        DynamicQuantize(),
        # 3. Quantize the (now int8) weights once at build time: fold what depends only on constants.
        tvm.relax.transform.FoldConstant(),
    ]


# One pass pipeline per scheme name; "none" has no passes. A new scheme adds its entry here.
PIPELINES = {
    "none": lambda: [],
    "w8a8-dynamic": _w8a8_dynamic_pipeline,
}


def quantize(imported: ImportedModel, scheme: QuantScheme) -> ImportedModel:
    """Return ``imported`` with its module rewritten by ``scheme``'s pass pipeline.

    Raises
    ------
    InputError
        When the scheme is registered but has no pass pipeline yet, or the model arrived quantized.
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
    passes = PIPELINES[scheme.name]()
    if not passes:
        return imported
    import tvm

    try:
        mod = tvm.transform.Sequential(passes, name=f"quantize-{scheme.name}")(imported.mod)
    except Exception as err:  # TVM raises TVMError and friends from inside passes
        raise BuildError(f"quantizing {imported.path} with {scheme.name} failed: {last_line(err)}") from err
    log.info("quantized %s with %s", imported.path, scheme.name)
    return dataclasses.replace(imported, mod=mod)
