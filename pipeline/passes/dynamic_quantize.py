"""DynamicQuantize: float32 conv2d / matmul with constant weights -> int8 x int8 -> int32, dequantized to float32.

Weights are quantized offline, symmetric, one scale per output channel (``max|w| / 127``). Activations are
quantized at run time, symmetric, one scale per tensor computed in the graph (``max|x| / 127``). The int32
accumulator is converted back to float32 and multiplied by ``x_scale * w_scale[channel]``, so every rewritten
operator takes and returns float32 and the rest of the graph is unchanged.

Not done yet: requantization (int32 straight to int8 between consecutive quantized layers, without the float
round trip), static (calibrated) activation scales, importing ONNX QDQ graphs, asymmetric activations.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from edgetvm.pipeline.passes.quant_layers import rewrite_layers

QMAX = 127
# A tensor of zeros has max|x| = 0; the floor keeps its scale finite (it then quantizes to zeros, as it should).
EPSILON = 1e-12


@tvm.transform.module_pass(opt_level=0, name="DynamicQuantize")
class DynamicQuantize:
    """Rewrite float32 ``relax.nn.conv2d`` and ``relax.matmul`` with constant weights to int8 compute.

    Everything else (other operators, non-constant weights, other dtypes) stays float, and so do the layers
    whose keys (see ``quant_layers``) are in ``keep_float``.
    """

    def __init__(self, keep_float: frozenset[str] = frozenset()):
        self.keep_float = frozenset(keep_float)

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updated = mod.clone()  # a module pass must not change the module it was given
        updated["main"] = rewrite_layers(mod["main"], self._rewrite)
        return updated

    def _rewrite(self, call: relax.Call, key: str) -> relax.Expr:
        handler = _HANDLERS.get(call.op.name)
        if handler is None or key in self.keep_float:
            return call
        quantized = handler(call, *call.args[:2])
        return call if quantized is None else quantized


def _quantized_conv2d(call: relax.Call, data: relax.Expr, weight: tvm.ir.GenericConst) -> relax.Expr | None:
    attrs = call.attrs
    if sorted(str(attrs.data_layout)) != sorted("NCHW") or sorted(str(attrs.kernel_layout)) != sorted("OIHW"):
        return None  # packed layouts (NCHW4c, ...) do not come from the importers
    kernel_layout = str(attrs.kernel_layout)
    out_layout = str(attrs.out_layout) or str(attrs.data_layout)
    w_int8, w_scale = quantize_weight(weight.value.numpy(), kernel_layout.index("O"))
    x_int8, x_scale = _quantize_activation(data)
    acc = R.nn.conv2d(
        x_int8,
        relax.const(w_int8),
        strides=[int(s) for s in attrs.strides],
        padding=[int(p) for p in attrs.padding],
        dilation=[int(d) for d in attrs.dilation],
        groups=int(attrs.groups),
        data_layout=str(attrs.data_layout),
        kernel_layout=kernel_layout,
        out_layout=out_layout,
        out_dtype="int32",
    )
    # The per-channel scales broadcast along the output's channel axis, at the output's full rank ((1, C, 1, 1) for
    # NCHW): layout conversion can then re-lay the constant out with the conv instead of transposing around it.
    channel_axis = out_layout.index("C")
    shape = [1] * len(out_layout)
    shape[channel_axis] = -1
    return _dequantize(acc, x_scale, w_scale.reshape(shape))


def _quantized_matmul(call: relax.Call, data: relax.Expr, weight: tvm.ir.GenericConst) -> relax.Expr | None:
    weight_np = weight.value.numpy()
    # The weight's last axis is the output (column) axis: one scale per column, which broadcasts over the result.
    w_int8, w_scale = quantize_weight(weight_np, weight_np.ndim - 1)
    x_int8, x_scale = _quantize_activation(data)
    acc = R.matmul(x_int8, relax.const(w_int8), out_dtype="int32")
    return _dequantize(acc, x_scale, w_scale)


# op name -> handler returning the int8 rewrite, or None to leave the call in float; unknown ops stay float.
_HANDLERS = {"relax.nn.conv2d": _quantized_conv2d, "relax.matmul": _quantized_matmul}


def quantize_weight(weight: np.ndarray, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per-channel quantization of a float weight.

    Returns
    -------
    (int8 array of the weight's shape, float32 scales of shape ``(weight.shape[channel_axis],)``)
    """
    moved = np.moveaxis(weight.astype(np.float32), channel_axis, 0)
    max_abs = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scale = (np.maximum(max_abs, EPSILON) / QMAX).astype(np.float32)
    broadcast = scale.reshape((-1,) + (1,) * (moved.ndim - 1))
    quantized = np.clip(np.round(moved / broadcast), -QMAX, QMAX).astype(np.int8)
    return np.moveaxis(quantized, 0, channel_axis), scale


def _quantize_activation(data: relax.Expr) -> tuple[relax.Expr, relax.Expr]:
    max_abs = R.maximum(R.max(R.abs(data)), relax.const(EPSILON, "float32"))
    scale = R.divide(max_abs, relax.const(float(QMAX), "float32"))
    rounded = R.round(R.divide(data, scale))
    clipped = R.clip(rounded, R.prim_value(-float(QMAX)), R.prim_value(float(QMAX)))
    return R.astype(clipped, "int8"), scale


def _dequantize(acc: relax.Expr, x_scale: relax.Expr, w_scale: np.ndarray) -> relax.Expr:
    """``acc * x_scale * w_scale``: the runtime scalar and the constant per-channel scales apply one after the
    other, so the channel broadcast involves only a constant (which layout conversion can transform)."""
    return R.multiply(R.multiply(R.astype(acc, "float32"), x_scale), relax.const(w_scale.astype(np.float32)))
