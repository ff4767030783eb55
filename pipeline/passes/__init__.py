"""Relax passes of the quantization pipelines, one pass per file (see ``pipeline/quantize.py`` for their order)."""

from edgetvm.pipeline.passes.dynamic_gated_input import DynamicGatedInput
from edgetvm.pipeline.passes.dynamic_quantize import DynamicQuantize
from edgetvm.pipeline.passes.dynamic_requantize import DynamicRequantize
from edgetvm.pipeline.passes.qdq_to_int8 import QDQToInt8
from edgetvm.pipeline.passes.requantize import Requantize
from edgetvm.pipeline.passes.static_quantize import StaticQuantize

__all__ = ["DynamicGatedInput", "DynamicQuantize", "DynamicRequantize", "QDQToInt8", "Requantize", "StaticQuantize"]
