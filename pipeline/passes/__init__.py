"""Relax passes of the quantization pipelines, one pass per file (see ``pipeline/quantize.py`` for their order)."""

from edgetvm.pipeline.passes.dynamic_quantize import DynamicQuantize
from edgetvm.pipeline.passes.qdq_to_int8 import QDQToInt8

__all__ = ["DynamicQuantize", "QDQToInt8"]
