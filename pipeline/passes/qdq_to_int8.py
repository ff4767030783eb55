"""QDQToInt8: the quantize/dequantize pairs of an already-quantized model become int8 compute.

An ONNX model quantized by QAT or onnxruntime (QDQ format, or the QOperator ops that ``onnx_qoperators`` imports in
QDQ form) reaches Relax as float math between ``dequantize`` and ``quantize``::

    conv2d(dequantize(x_q, xs, xzp), dequantize(w_q, ws, wzp)) [+ bias] [-> quantize(ys, yzp)]

(``matmul`` alike, its weight possibly transposed). This pass computes such a layer on the integers
(``integer_ops``: int8 x int8 -> int32, zero points and padding exact) and then

- with a following ``quantize``: requantizes the accumulator straight to int8/uint8,
  ``clip(round(acc * xs * ws / ys) + yzp)``, the bias added in int32 when it was quantized with ``xs * ws``
  (as onnxruntime quantizes it) and in float otherwise;
- otherwise: dequantizes it, ``acc * xs * ws`` (+ bias), to float32 for the float op that follows.

The weight (and its ``quantize``, when the quantizer treated a weight as an activation) must be constant, the
weight scale per tensor or per output channel, the activation scale and zero point per tensor (constant or
computed in the graph). Layers that do not fit stay as imported: float math on dequantized values, which is
still right, only slower.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard

from edgetvm.pipeline import integer_ops

_QMIN_QMAX = {"int8": (-128, 127), "uint8": (0, 255)}


def _pattern():
    x = is_op("relax.dequantize")(wildcard(), wildcard(), wildcard())
    w_dq = is_op("relax.dequantize")(wildcard(), wildcard(), wildcard())
    weight = w_dq | is_op("relax.permute_dims")(w_dq)
    layer = is_op("relax.nn.conv2d")(x, weight) | is_op("relax.matmul")(x, weight)
    biased = is_op("relax.add")(layer, wildcard())
    quantized = is_op("relax.quantize")(biased | layer, wildcard(), wildcard())
    return layer, biased, quantized


@tvm.transform.module_pass(opt_level=0, name="QDQToInt8")
class QDQToInt8:
    """Rewrite every dequantize -> conv2d / matmul (-> quantize) of ``main`` to int8 compute."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updated = mod.clone()
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                updated[gvar] = _rewrite_function(func)
        return updated


# Ops that commute with quantization when the scale and zero point stay the same: max_pool2d(dequantize(x)) then
# quantize is max_pool2d(x) exactly (dequantization is monotonic), a reshape or transpose moves values only.
_INTEGER_SAFE_OPS = ("relax.nn.max_pool2d", "relax.reshape", "relax.permute_dims")


def _round_trip_pattern():
    dq = is_op("relax.dequantize")(wildcard(), wildcard(), wildcard())
    moved = dq
    for op in _INTEGER_SAFE_OPS:
        moved = moved | is_op(op)(dq, wildcard()) if op == "relax.reshape" else moved | is_op(op)(dq)
    return is_op("relax.quantize")(moved, wildcard(), wildcard())


def _rewrite_function(func: relax.Function) -> relax.Function:
    layer, biased, quantized = _pattern()
    # Widest match first: a layer whose output is quantized becomes one requantizing layer; what is left dequantizes.
    for pattern in (quantized, biased, layer):
        values = relax.analysis.get_var2val(func)
        func = rewrite_call(pattern, lambda call, _m, values=values: _rewrite(call, values), func)
    # Then int8 flows from layer to layer: quantize(max_pool2d(dequantize(x))), same parameters, is max_pool2d(x).
    values = relax.analysis.get_var2val(func)
    func = rewrite_call(_round_trip_pattern(), lambda call, _m: _skip_round_trip(call, values), func)
    return relax.analysis.remove_all_unused(func)


def _skip_round_trip(call: relax.Expr, values: dict) -> relax.Expr:
    """``op(x)`` for ``quantize(op(dequantize(x, s, z)), s, z)`` (``op`` possibly absent), else ``call``."""
    if not isinstance(call, relax.Call):
        return call
    inner = _resolve(call.args[0], values)
    dq = inner if inner.op.name == "relax.dequantize" else _resolve(inner.args[0], values)
    if str(dq.args[0].ty.dtype) != str(call.ty.dtype):
        return call
    params = [evaluate(arg, values) for arg in (*dq.args[1:], *call.args[1:])]
    if any(p is None or p.size != 1 for p in params):
        return call
    (s_in, z_in, s_out, z_out) = (float(p.reshape(())) for p in params)
    if s_in != s_out or z_in != z_out:
        return call
    if inner is dq:
        return dq.args[0]
    return relax.Call(inner.op, [dq.args[0], *inner.args[1:]], inner.attrs)


@dataclass
class _Layer:
    """A matched integer layer: its int32 accumulator and the float scale that dequantizes it."""

    acc: relax.Expr
    x_scale: relax.Expr | float  # a runtime scalar, or a constant
    w_scale: np.ndarray  # per output channel, shaped to broadcast over the accumulator
    channels: int

    def scale_const(self, divisor: float = 1.0) -> tuple[relax.Expr | None, np.ndarray]:
        """(runtime scalar or None, constant) whose product is ``x_scale * w_scale / divisor``.

        In float32, in onnxruntime's order (``x_scale * w_scale / y_scale``), so that requantized values round
        the same way.
        """
        w_scale, divisor = self.w_scale.astype(np.float32), np.float32(divisor)
        if isinstance(self.x_scale, float):
            return None, (np.float32(self.x_scale) * w_scale / divisor).astype(np.float32)
        return self.x_scale, (w_scale / divisor).astype(np.float32)

    def scaled(self, acc: relax.Expr, divisor: float = 1.0) -> relax.Expr:
        runtime, constant = self.scale_const(divisor)
        out = relax.op.astype(acc, "float32")
        if runtime is not None:
            out = relax.op.multiply(out, runtime)
        return relax.op.multiply(out, relax.const(constant))


def _rewrite(call: relax.Expr, values: dict) -> relax.Expr:
    if not isinstance(call, relax.Call):
        return call
    chain = _unchain(call, values)
    if chain is None:
        return call
    layer_call, bias_expr, quantize_call = chain
    layer = _integer_layer(layer_call, values)
    if layer is None:
        return call
    bias = None if bias_expr is None else _bias(bias_expr, layer, values)
    if bias_expr is not None and bias is None:
        return call
    acc = layer.acc
    int_bias, float_bias = bias if bias is not None else (None, None)
    if int_bias is not None:
        acc = relax.op.add(acc, relax.const(int_bias))
    if quantize_call is None:
        out = layer.scaled(acc)
        return out if float_bias is None else relax.op.add(out, relax.const(float_bias))
    requantized = _requantize(acc, layer, float_bias, quantize_call, values)
    return call if requantized is None else requantized


def _unchain(call: relax.Call, values: dict):
    """(layer call, bias expression or None, quantize call or None) of a matched expression."""
    quantize_call = None
    if call.op.name == "relax.quantize":
        quantize_call, call = call, _resolve(call.args[0], values)
    bias = None
    if call.op.name == "relax.add":
        bias, call = call.args[1], _resolve(call.args[0], values)
    if not isinstance(call, relax.Call) or call.op.name not in ("relax.nn.conv2d", "relax.matmul"):
        return None
    return call, bias, quantize_call


def _resolve(expr: relax.Expr, values: dict) -> relax.Expr:
    while isinstance(expr, relax.Var) and expr in values:
        expr = values[expr]
    return expr


def _integer_layer(call: relax.Call, values: dict) -> _Layer | None:
    x_dq = _resolve(call.args[0], values)
    x_q, x_scale, x_zp = x_dq.args
    if str(x_q.ty.dtype) not in _QMIN_QMAX or not (integer_ops.is_scalar(x_scale) and integer_ops.is_scalar(x_zp)):
        return None
    weight = _constant_weight(_resolve(call.args[1], values), values)
    if weight is None:
        return None
    w_q, w_scale, w_zp, axis = weight
    scale_value = evaluate(x_scale, values)
    zp_value = evaluate(x_zp, values)
    x_scale = float(scale_value.reshape(())) if scale_value is not None else relax.op.reshape(x_scale, ())
    zp = int(zp_value.reshape(())) if zp_value is not None else x_zp
    if call.op.name == "relax.nn.conv2d":
        attrs = call.attrs
        if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW" or axis not in (None, 0):
            return None
        if str(attrs.out_layout or "NCHW") != "NCHW":
            return None
        acc = integer_ops.integer_conv2d(
            x_q, zp, w_q, w_zp, attrs.strides, attrs.padding, attrs.dilation, int(attrs.groups)
        )
        channels = w_q.shape[0]
        shape = (1, -1, 1, 1)
    else:
        if w_q.ndim != 2 or axis not in (None, 1):
            return None
        acc = integer_ops.integer_matmul(x_q, zp, w_q, w_zp)
        channels = w_q.shape[1]
        shape = (-1,)
    scales = np.broadcast_to(np.asarray(w_scale, np.float64).reshape(-1), (channels,)).reshape(shape)
    return _Layer(acc, x_scale, scales, channels)


def _constant_weight(expr: relax.Expr, values: dict):
    """(integer weight, scale, zero point, channel axis or None) of ``dequantize(const)``, maybe transposed."""
    transpose = None
    if isinstance(expr, relax.Call) and expr.op.name == "relax.permute_dims":
        transpose, expr = expr, _resolve(expr.args[0], values)
    if not (isinstance(expr, relax.Call) and expr.op.name == "relax.dequantize"):
        return None
    w_q, scale, zp = (evaluate(arg, values) for arg in expr.args)
    if w_q is None or scale is None or zp is None or w_q.dtype.kind not in "iu":
        return None
    axis = int(expr.attrs.axis) % w_q.ndim if scale.size > 1 or zp.size > 1 else None
    if transpose is not None:
        axes = (
            [int(a) for a in transpose.attrs.axes] if transpose.attrs.axes is not None else list(range(w_q.ndim))[::-1]
        )
        w_q = np.transpose(w_q, axes)
        axis = None if axis is None else axes.index(axis)
    return w_q, scale.reshape(-1), zp.reshape(-1), axis


def _bias(expr: relax.Expr, layer: _Layer, values: dict):
    """(int32 bias or None, float bias or None), shaped like the layer's scales; None when not constant."""
    resolved = _resolve(expr, values)
    inner = resolved
    while isinstance(inner, relax.Call) and inner.op.name == "relax.reshape":
        inner = _resolve(inner.args[0], values)
    if isinstance(inner, relax.Call) and inner.op.name == "relax.dequantize" and isinstance(layer.x_scale, float):
        b_q, b_scale, b_zp = (evaluate(arg, values) for arg in inner.args)
        expected = layer.x_scale * layer.w_scale.reshape(-1)
        if (
            b_q is not None
            and b_q.dtype == np.int32
            and b_zp is not None
            and not b_zp.any()
            and b_scale is not None
            and b_q.size == layer.channels
            and np.allclose(np.broadcast_to(b_scale.reshape(-1), expected.shape), expected, rtol=1e-5, atol=0)
        ):
            return b_q.reshape(layer.w_scale.shape).astype(np.int32), None
    value = evaluate(resolved, values)
    if value is None or value.dtype != np.float32 or value.size != layer.channels:
        return None
    return None, value.reshape(layer.w_scale.shape)


def _requantize(acc, layer: _Layer, float_bias, quantize_call: relax.Call, values: dict) -> relax.Expr | None:
    """``clip(round(acc * xs * ws / ys [+ bias / ys]) + yzp)`` in the quantize's dtype; None if it does not fit."""
    _, y_scale, y_zp = quantize_call.args
    ys, yzp = evaluate(y_scale, values), evaluate(y_zp, values)
    dtype = str(quantize_call.ty.dtype)
    if ys is None or yzp is None or ys.size != 1 or yzp.size != 1 or dtype not in _QMIN_QMAX:
        return None
    ys, yzp = float(ys.reshape(())), int(yzp.reshape(()))
    out = layer.scaled(acc, ys)
    if float_bias is not None:
        out = relax.op.add(out, relax.const((float_bias / ys).astype(np.float32)))
    qmin, qmax = _QMIN_QMAX[dtype]
    out = relax.op.add(relax.op.round(out), relax.const(float(yzp), "float32"))
    return relax.op.astype(relax.op.clip(out, float(qmin), float(qmax)), dtype)


# Ops a constant expression may contain (weights the quantizer quantizes in the graph, reshaped biases).
_EVALUATORS = {
    "relax.reshape": lambda x, _shape, call: x.reshape([int(d) for d in call.ty.shape.values]),
    "relax.permute_dims": lambda x, call: np.transpose(
        x, None if call.attrs.axes is None else [int(a) for a in call.attrs.axes]
    ),
    "relax.astype": lambda x, call: x.astype(str(call.attrs.dtype)),
    "relax.quantize": lambda x, scale, zp, call: _quantize_np(x, scale, zp, call),
    "relax.dequantize": lambda x, scale, zp, call: _dequantize_np(x, scale, zp, call),
}


def evaluate(expr: relax.Expr, values: dict) -> np.ndarray | None:
    """The numpy value of ``expr`` when it is a constant or computed from constants by the ops above, else None."""
    expr = _resolve(expr, values)
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    if isinstance(expr, relax.ShapeExpr):
        return np.array([int(d) for d in expr.values])
    if not (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in _EVALUATORS):
        return None
    args = [evaluate(arg, values) for arg in expr.args]
    if any(arg is None for arg in args):
        return None
    return _EVALUATORS[expr.op.name](*args, expr)


def _channel_shape(x: np.ndarray, param: np.ndarray, axis: int) -> np.ndarray:
    if param.size == 1:
        return param.reshape(())
    shape = [1] * x.ndim
    shape[axis % x.ndim] = -1
    return param.reshape(shape)


def _quantize_np(x, scale, zp, call) -> np.ndarray:
    axis = int(call.attrs.axis)
    dtype = str(call.attrs.out_dtype)
    info = np.iinfo(dtype)
    q = np.rint(x / _channel_shape(x, scale, axis)) + _channel_shape(x, zp, axis)  # onnxruntime rounds half to even
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize_np(x, scale, zp, call) -> np.ndarray:
    axis = int(call.attrs.axis)
    shifted = x.astype(np.int64) - _channel_shape(x, zp, axis).astype(np.int64)
    return (shifted * _channel_shape(x, scale, axis)).astype(str(call.attrs.out_dtype))
