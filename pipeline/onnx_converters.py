"""edgetvm's additions and overrides to TVM's ONNX importer (its convert map is a module-level function).

``converters()`` is a context manager under which ``from_onnx`` uses TVM's map updated with ``CONVERTERS``.
"""

from __future__ import annotations

import contextlib

import numpy as np


def _clip_converter():
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    def bound(value, default):
        if value is None:
            return None
        if isinstance(value, tvm.ir.GenericConst):
            number = float(value.value.numpy())
            return None if np.isnan(number) or number == default else number
        return value

    class Clip(OnnxOpConverter):
        """Clip as Relax ``maximum``/``minimum``, not TE calls: layout conversion can see through it.

        TVM's converter emits ``call_tir`` functions, so converting a CNN to NHWC surrounds every ReLU6 and
        hard-swish with a pair of transposes. NaN or infinite constant bounds mean "unbounded", as in ONNX.
        """

        @classmethod
        def _apply(cls, x, lo, hi):
            dtype = x.ty.dtype
            for value, op in ((lo, relax.op.maximum), (hi, relax.op.minimum)):
                if value is None:
                    continue
                x = op(x, relax.const(value, dtype) if isinstance(value, float) else value)
            return x

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            lo = attr.get("min", -np.inf)
            hi = attr.get("max", np.inf)
            return cls._apply(inputs[0], None if np.isinf(lo) else float(lo), None if np.isinf(hi) else float(hi))

        @classmethod
        def _impl_v11(cls, bb, inputs, attr, params):
            return cls._impl_v13(bb, inputs, attr, params)

        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            lo = bound(inputs[1] if len(inputs) > 1 else None, -np.inf)
            hi = bound(inputs[2] if len(inputs) > 2 else None, np.inf)
            if not isinstance(lo, float | None) or not isinstance(hi, float | None):
                return None  # a computed bound: TVM's own converter handles it
            return cls._apply(inputs[0], lo, hi)

    return Clip


def _overrides() -> dict:
    from edgetvm.pipeline import onnx_qoperators

    return {"Clip": _clip_converter(), **onnx_qoperators.converters()}


@contextlib.contextmanager
def converters():
    """TVM's ONNX importer with edgetvm's converters, for the duration of the block."""
    from tvm.relax.frontend.onnx import onnx_frontend

    original = onnx_frontend._get_convert_map
    overrides = _overrides()

    def extended():
        merged = original()
        for name, converter in overrides.items():
            merged[name] = _fallback(converter, merged.get(name))
        return merged

    onnx_frontend._get_convert_map = extended
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original


def _fallback(converter, upstream):
    """``converter`` where it returns an expression, TVM's ``upstream`` converter where it returns None."""
    if upstream is None:
        return converter

    class WithFallback(converter):
        @classmethod
        def get_converter(cls, opset):
            ours = converter.get_converter(opset)

            def convert(bb, inputs, attr, params):
                result = ours(bb, inputs, attr, params)
                return upstream.get_converter(opset)(bb, inputs, attr, params) if result is None else result

            return convert

    return WithFallback


def supported_ops() -> set[str]:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return set(_get_convert_map()) | set(_overrides())
