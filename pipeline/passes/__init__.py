"""Relax passes of the quantization pipelines, one pass per file (see ``pipeline/quantize.py`` for their order)."""

from edgetvm.pipeline.passes.dynamic_quantize import DynamicQuantize

__all__ = ["DynamicQuantize"]
