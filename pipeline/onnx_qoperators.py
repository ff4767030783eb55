"""ONNX converters for the quantized operators TVM 0.27's importer lacks: what onnxruntime's quantizers write.

``quantize_dynamic`` writes ``ConvInteger`` / ``MatMulInteger`` after ``DynamicQuantizeLinear``;
``quantize_static(quant_format=QOperator)`` writes ``QLinearConv``, ``QLinearMatMul`` and, in the ``com.microsoft``
domain, ``QGemm``, ``QLinearAdd``, ``QLinearMul``, ``QLinearSoftmax``, ``QLinearSigmoid``, ``QLinearLeakyRelu``,
``QLinearGlobalAveragePool``, ``QLinearAveragePool``, ``QLinearConcat``.

``ConvInteger`` and ``MatMulInteger`` (int32 results) are built on the integers directly (``integer_ops``). The
``QLinear*`` ops are imported in QDQ form, ``quantize(op(dequantize(x), ...))``, with TVM's own float converter
for ``op``: the ``QDQToInt8`` pass then turns every conv2d / matmul among them into int8 compute with a
requantized int8 output; the elementwise and pooling ops run on the dequantized values, as onnxruntime's own
kernels compute them.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from edgetvm.pipeline import integer_ops

MICROSOFT_OPS = frozenset(
    {
        "QGemm",
        "QLinearAdd",
        "QLinearMul",
        "QLinearSoftmax",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearGlobalAveragePool",
        "QLinearAveragePool",
        "QLinearConcat",
    }
)
NEWEST = 1 << 30  # get_converter(NEWEST): TVM's converter for the newest opset it has


def _input(inputs, index: int):
    return inputs[index] if len(inputs) > index else None


def _constant(expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


# numpy for the ops TVM's DynamicQuantizeLinear converter writes, to fold a weight quantized in the graph.
_NUMPY = {
    "relax.max": lambda x: np.max(x),
    "relax.min": lambda x: np.min(x),
    "relax.maximum": np.maximum,
    "relax.minimum": np.minimum,
    "relax.subtract": np.subtract,
    "relax.divide": np.divide,
    "relax.round": np.rint,
}


def _folded(bb, expr) -> np.ndarray | None:
    """The value of ``expr`` when it is computed from constants only (a weight that ``quantize_dynamic`` quantizes
    in the graph with ``DynamicQuantizeLinear``, because the model holds it in a Constant node), else None."""
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    if isinstance(expr, relax.Var):
        value = bb.lookup_binding(expr)
        return None if value is None else _folded(bb, value)
    if isinstance(expr, relax.TupleGetItem):
        inner = expr.tuple_value
        while isinstance(inner, relax.Var) and bb.lookup_binding(inner) is not None:
            inner = bb.lookup_binding(inner)
        return _folded(bb, inner.fields[expr.index]) if isinstance(inner, relax.Tuple) else None
    if not (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op)):
        return None
    name = expr.op.name
    if name == "relax.clip":
        x = _folded(bb, expr.args[0])
        return None if x is None else np.clip(x, float(expr.args[1].value), float(expr.args[2].value))
    args = [_folded(bb, arg) for arg in expr.args]
    if any(arg is None for arg in args):
        return None
    if name == "relax.astype":
        return args[0].astype(str(expr.attrs.dtype))
    if name == "relax.quantize":
        x, scale, zero = args
        info = np.iinfo(str(expr.attrs.out_dtype))
        q = np.rint(x / scale.astype(np.float32)) + zero.astype(np.float32)
        return np.clip(q, info.min, info.max).astype(str(expr.attrs.out_dtype))
    if name in _NUMPY:
        return np.asarray(_NUMPY[name](*args)).astype(args[0].dtype)
    return None


def _check_scalar(op: str, name: str, expr) -> None:
    if expr is not None and not integer_ops.is_scalar(expr):
        shape = tuple(int(d) for d in expr.ty.shape.values) if expr.ty.shape is not None else "unknown"
        raise ValueError(f"{op}: {name} must be a scalar (one value per tensor), got shape {shape}")


def _zero(x, zero_point):
    return zero_point if zero_point is not None else relax.const(0, str(x.ty.dtype))


def dequantized(bb, op: str, x, scale, zero_point, axis: int = 1):
    """``dequantize(x)`` of a per-tensor (or, for weights, per-``axis``) quantized input."""
    if str(x.ty.dtype) not in ("int8", "uint8", "int32"):
        raise ValueError(f"{op}: quantized inputs are int8 or uint8, got {x.ty.dtype}")
    if integer_ops.is_scalar(scale):
        scale = relax.op.reshape(scale, ())
    zero = _zero(x, zero_point)
    if integer_ops.is_scalar(zero):
        zero = relax.op.reshape(zero, ())
    return bb.normalize(relax.op.dequantize(x, scale, zero, axis=axis % max(x.ty.ndim, 1), out_dtype="float32"))


def quantized(op: str, y, scale, zero_point):
    """``quantize(y)`` per tensor, to the zero point's dtype (uint8 without one, as in ONNX)."""
    _check_scalar(op, "y_scale", scale)
    _check_scalar(op, "y_zero_point", zero_point)
    dtype = str(zero_point.ty.dtype) if zero_point is not None else "uint8"
    zero = relax.op.reshape(zero_point, ()) if zero_point is not None else relax.const(0, "uint8")
    return relax.op.quantize(y, relax.op.reshape(scale, ()), zero, axis=-1, out_dtype=dtype)


def _activation(bb, op: str, inputs, first: int):
    """The dequantized activation ``inputs[first]`` with its scale and zero point at ``first + 1, first + 2``."""
    x, scale, zero = inputs[first], inputs[first + 1], _input(inputs, first + 2)
    _check_scalar(op, "x_scale", scale)
    _check_scalar(op, "x_zero_point", zero)
    return dequantized(bb, op, x, scale, zero)


def _converters() -> dict:
    from tvm.relax.frontend.onnx import onnx_frontend as frontend

    base = frontend.OnnxOpConverter

    def own(attr: dict, *drop: str) -> dict:
        return {key: value for key, value in attr.items() if key not in drop}

    class QLinearConv(base):
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            if len(inputs) < 8:
                raise ValueError(f"QLinearConv needs 8 or 9 inputs, got {len(inputs)}")
            x = _activation(bb, "QLinearConv", inputs, 0)
            w = dequantized(bb, "QLinearConv", inputs[3], inputs[4], inputs[5], 0)
            bias = _input(inputs, 8)
            if bias is not None:
                bias = dequantized(bb, "QLinearConv", bias, _bias_scale(inputs[1], inputs[4]), None, 0)
            out = frontend.Conv.get_converter(NEWEST)(bb, [x, w, bias], own(attr), params)
            return quantized("QLinearConv", out, inputs[6], inputs[7])

    class QLinearMatMul(base):
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            if len(inputs) != 8:
                raise ValueError(f"QLinearMatMul needs 8 inputs, got {len(inputs)}")
            a = _activation(bb, "QLinearMatMul", inputs, 0)
            b = dequantized(bb, "QLinearMatMul", inputs[3], inputs[4], inputs[5], -1)
            return quantized("QLinearMatMul", relax.op.matmul(a, b), inputs[6], inputs[7])

    class QGemm(base):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            if len(inputs) < 6:
                raise ValueError(f"QGemm needs at least 6 inputs, got {len(inputs)}")
            alpha = float(attr.get("alpha", 1.0))
            a = _activation(bb, "QGemm", inputs, 0)
            if attr.get("transA", 0):
                a = relax.op.permute_dims(a)
            trans_b = bool(attr.get("transB", 0))
            b = dequantized(bb, "QGemm", inputs[3], inputs[4], inputs[5], 0 if trans_b else -1)
            out = relax.op.matmul(a, relax.op.permute_dims(b) if trans_b else b)
            if alpha != 1.0:
                out = relax.op.multiply(out, relax.const(alpha, "float32"))
            bias = _input(inputs, 6)
            if bias is not None:  # int32, quantized with alpha * a_scale * b_scale
                scale = _bias_scale(inputs[1], inputs[4], alpha)
                out = relax.op.add(out, dequantized(bb, "QGemm", bias, scale, None, -1))
            y_scale = _input(inputs, 7)
            return out if y_scale is None else quantized("QGemm", out, y_scale, _input(inputs, 8))

    def binary(name: str, relax_op):
        class Binary(base):
            @classmethod
            def _impl_v1(cls, bb, inputs, attr, params):
                if len(inputs) < 7:
                    raise ValueError(f"{name} needs 7 or 8 inputs, got {len(inputs)}")
                a = _activation(bb, name, inputs, 0)
                b = _activation(bb, name, inputs, 3)
                return quantized(name, relax_op(a, b), inputs[6], _input(inputs, 7))

        Binary.__name__ = name
        return Binary

    def unary(name: str, float_op):
        """``quantize(float_op(dequantize(x)))`` for ops with inputs (x, x_scale, x_zp, y_scale, y_zp)."""

        class Unary(base):
            @classmethod
            def _impl_v1(cls, bb, inputs, attr, params):
                if len(inputs) < 4:
                    raise ValueError(f"{name} needs 4 or 5 inputs, got {len(inputs)}")
                x = _activation(bb, name, inputs, 0)
                out = float_op(bb, x, attr, params)
                return quantized(name, out, inputs[3], _input(inputs, 4))

        Unary.__name__ = name
        return Unary

    def softmax(bb, x, attr, params):
        opset = int(attr.get("opset", 13))
        converter = frontend.Softmax.get_converter(opset)
        return converter(bb, [x], own(attr, "opset"), params)

    def channels_first(name: str, convert):
        def run(bb, x, attr, params):
            if attr.get("channels_last", 0):
                raise ValueError(f"{name}: channels_last=1 (NHWC) is not supported")
            return convert(bb, [x], own(attr, "channels_last"), params)

        return run

    class QLinearConcat(base):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            if len(inputs) < 5 or (len(inputs) - 2) % 3:
                raise ValueError(f"QLinearConcat needs Y_scale, Y_zero_point and triples of inputs, got {len(inputs)}")
            parts = [_activation(bb, "QLinearConcat", inputs, i) for i in range(2, len(inputs), 3)]
            out = relax.op.concat(parts, axis=int(attr["axis"]))
            return quantized("QLinearConcat", out, inputs[0], inputs[1])

    global_pool = frontend.GlobalAveragePool.get_converter(NEWEST)
    average_pool = frontend.AveragePool.get_converter(NEWEST)
    return {
        "QLinearConv": QLinearConv,
        "QLinearMatMul": QLinearMatMul,
        "QGemm": QGemm,
        "QLinearAdd": binary("QLinearAdd", relax.op.add),
        "QLinearMul": binary("QLinearMul", relax.op.multiply),
        "QLinearSoftmax": unary("QLinearSoftmax", softmax),
        "QLinearSigmoid": unary("QLinearSigmoid", lambda bb, x, attr, params: relax.op.sigmoid(x)),
        "QLinearLeakyRelu": unary(
            "QLinearLeakyRelu", lambda bb, x, attr, params: relax.op.nn.leakyrelu(x, float(attr.get("alpha", 0.01)))
        ),
        "QLinearGlobalAveragePool": unary(
            "QLinearGlobalAveragePool", channels_first("QLinearGlobalAveragePool", global_pool)
        ),
        "QLinearAveragePool": unary("QLinearAveragePool", channels_first("QLinearAveragePool", average_pool)),
        "QLinearConcat": QLinearConcat,
        "ConvInteger": _conv_integer(base),
        "MatMulInteger": _matmul_integer(base),
    }


def _bias_scale(x_scale, w_scale, alpha: float = 1.0):
    """``alpha * x_scale * w_scale``, folded when both are constants (so that QDQToInt8 can add the bias in int32)."""
    xs, ws = _constant(x_scale), _constant(w_scale)
    if xs is not None and ws is not None:
        return relax.const((alpha * xs.astype(np.float64) * ws.astype(np.float64)).astype(np.float32).reshape(-1))
    scale = relax.op.multiply(relax.op.reshape(x_scale, ()), w_scale)
    return scale if alpha == 1.0 else relax.op.multiply(scale, relax.const(alpha, "float32"))


def _zero_point_value(expr):
    """An int for a constant scalar zero point, the expression for a computed one, 0 when absent."""
    if expr is None:
        return 0
    value = _constant(expr)
    if value is None:
        if not integer_ops.is_scalar(expr):
            raise ValueError(f"activation zero point must be a scalar, got {expr.ty}")
        return expr
    if value.size != 1:
        raise ValueError(f"activation zero point must be a scalar, got shape {value.shape}")
    return int(value.reshape(()))


def _weight_zero_point(bb, expr) -> np.ndarray | None:
    if expr is None:
        return np.zeros(1, np.int32)
    value = _folded(bb, expr)
    return None if value is None else value.reshape(-1)


def _conv_integer(base):
    class ConvInteger(base):
        """int32 ``conv(x - x_zp, w - w_zp)``: int8 compute on a constant weight, int32 compute otherwise."""

        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            x, w = inputs[0], inputs[1]
            if x.ty.ndim != 4:
                raise ValueError(f"ConvInteger: only 2-D convolutions (4-D inputs) are supported, got rank {x.ty.ndim}")
            auto_pad = attr.get("auto_pad", b"NOTSET")
            auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
            if auto_pad not in ("NOTSET", "VALID"):
                raise ValueError(f"ConvInteger: auto_pad {auto_pad} is not supported; give explicit pads")
            pads = [0, 0, 0, 0] if auto_pad == "VALID" else list(attr.get("pads", [0, 0, 0, 0]))
            strides = list(attr.get("strides", [1, 1]))
            dilations = list(attr.get("dilations", [1, 1]))
            group = int(attr.get("group", 1))
            weight, w_zp = _folded(bb, w), _weight_zero_point(bb, _input(inputs, 3))
            x_zp = _zero_point_value(_input(inputs, 2))
            if weight is not None and w_zp is not None:
                return integer_ops.integer_conv2d(x, x_zp, weight, w_zp, strides, pads, dilations, group)
            return relax.op.nn.conv2d(
                _widened(x, _input(inputs, 2)),
                _widened(w, _input(inputs, 3), per_channel_axis=0),
                strides=strides,
                padding=pads,
                dilation=dilations,
                groups=group,
                out_dtype="int32",
            )

    return ConvInteger


def _matmul_integer(base):
    class MatMulInteger(base):
        """int8 compute on a constant 2-D weight; other cases go to TVM's converter (int32 compute)."""

        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            weight, w_zp = _folded(bb, inputs[1]), _weight_zero_point(bb, _input(inputs, 3))
            a_zp = _input(inputs, 2)
            if weight is None or weight.ndim != 2 or w_zp is None:
                return None
            if a_zp is not None and not integer_ops.is_scalar(a_zp):
                return None
            return integer_ops.integer_matmul(inputs[0], _zero_point_value(a_zp), weight, w_zp)

    return MatMulInteger


def _widened(x, zero_point, per_channel_axis: int | None = None):
    """``x - zero_point`` in int32 (the fallback for weights computed in the graph)."""
    out = relax.op.astype(x, "int32")
    if zero_point is None:
        return out
    zp = relax.op.astype(zero_point, "int32")
    if per_channel_axis is not None and not integer_ops.is_scalar(zero_point):
        shape = [1] * x.ty.ndim
        shape[per_channel_axis] = -1
        zp = relax.op.reshape(zp, shape)
    return relax.op.subtract(out, zp)


def converters() -> dict:
    """op type -> converter class, for ``onnx_converters``."""
    return _converters()
