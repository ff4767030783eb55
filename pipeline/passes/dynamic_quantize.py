"""DynamicQuantize: float32 conv2d / matmul with constant weights -> int8 x int8 -> int32, dequantized to float32.

Weights are quantized offline, symmetric, one scale per output channel (``max|w| / 127``; or one for the whole
weight). Activations are quantized at run time, symmetric, one scale per tensor computed in the graph
(``max|x| / 127``), or with ``per_row`` one per row of a matmul's input (``max|x|`` over its last axis, kept as a
``(..., M, 1)`` column that broadcasts over the result's rows). The int32 accumulator is converted back to float32
and multiplied by ``x_scale * w_scale[channel]``, so every rewritten operator takes and returns float32 and the rest
of the graph is unchanged.

Between two int8 layers ``dynamic_requantize.py`` then quantizes the int32 accumulator straight to the next
layer's int8 with its run-time scale. Static (calibrated) scales and their requantization are
``static_quantize.py`` and ``requantize.py``. Not done yet: asymmetric activations.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from edgetvm.pipeline.passes.quant_layers import rewrite_main

QMAX = 127
# A tensor of zeros has max|x| = 0; the floor keeps its scale finite (it then quantizes to zeros, as it should).
EPSILON = 1e-12


@tvm.transform.module_pass(opt_level=0, name="DynamicQuantize")
class DynamicQuantize:
    """Rewrite float32 ``relax.nn.conv2d`` and ``relax.matmul`` with constant weights to int8 compute.

    Everything else (other operators, non-constant weights, other dtypes) stays float, and so do the layers
    whose keys (see ``quant_layers``) are in ``keep_float``. ``per_tensor_weights``: one weight scale per layer
    rather than per output channel; ``per_row``: one activation scale per row of each matmul's input (convs keep
    one per tensor).
    """

    def __init__(
        self, keep_float: frozenset[str] = frozenset(), per_tensor_weights: bool = False, per_row: bool = False
    ):
        self.keep_float = frozenset(keep_float)
        self.per_tensor_weights = per_tensor_weights
        self.per_row = per_row

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_main(mod, self._rewrite)

    def _rewrite(self, call: relax.Call, key: str) -> relax.Expr:
        layer = INT8_LAYERS.get(call.op.name)
        if layer is None or key in self.keep_float:
            return call
        rows = self.per_row and call.op.name == "relax.matmul" and call.args[0].ty.ndim >= 2
        x_int8, x_scale = _quantize_activation(call.args[0], rows)
        built = layer(call, x_int8, call.args[1], self.per_tensor_weights)
        if built is None:
            return call
        acc, w_scale = built
        return _dequantize(acc, x_scale, w_scale)


def int8_conv2d(
    call: relax.Call, x_int8: relax.Expr, weight: tvm.ir.GenericConst, per_tensor: bool = False
) -> tuple[relax.Expr, np.ndarray] | None:
    """``call``'s conv2d over the int8 activation ``x_int8`` and its weight quantized per output channel.

    Returns the int32 accumulator and the weight scales shaped to broadcast along the output's channel axis, at
    the output's full rank ((1, C, 1, 1) for NCHW: layout conversion can then re-lay the constant out with the conv
    instead of transposing around it); None for layouts the importers do not write (NCHW4c, ...).
    """
    attrs = call.attrs
    if sorted(str(attrs.data_layout)) != sorted("NCHW") or sorted(str(attrs.kernel_layout)) != sorted("OIHW"):
        return None
    kernel_layout = str(attrs.kernel_layout)
    out_layout = str(attrs.out_layout) or str(attrs.data_layout)
    w_int8, w_scale = quantize_weight(weight.value.numpy(), kernel_layout.index("O"), per_tensor)
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
    shape = [1] * len(out_layout)
    shape[out_layout.index("C")] = -1
    return acc, w_scale.reshape(shape)


def int8_matmul(
    call: relax.Call, x_int8: relax.Expr, weight: tvm.ir.GenericConst, per_tensor: bool = False
) -> tuple[relax.Expr, np.ndarray] | None:
    """``x_int8 @ weight`` in int32 with the weight quantized per column (its last axis, the output axis): one
    scale per column, which broadcasts over the result."""
    weight_np = weight.value.numpy()
    w_int8, w_scale = quantize_weight(weight_np, weight_np.ndim - 1, per_tensor)
    return R.matmul(x_int8, relax.const(w_int8), out_dtype="int32"), w_scale


# op name -> builder of the int8 layer (int32 accumulator, weight scales), or None to leave the call in float;
# unknown ops stay float. Shared by the dynamic and static passes, which differ in how activations are quantized.
INT8_LAYERS = {"relax.nn.conv2d": int8_conv2d, "relax.matmul": int8_matmul}


def quantize_weight(weight: np.ndarray, channel_axis: int, per_tensor: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per-channel (or, with ``per_tensor``, one scale for all) quantization of a float weight.

    Returns
    -------
    (int8 array of the weight's shape, float32 scales of shape ``(weight.shape[channel_axis],)``)
    """
    moved = np.moveaxis(weight.astype(np.float32), channel_axis, 0)
    max_abs = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    if per_tensor:  # the same scale repeated per channel: what uses the scales does not change
        max_abs = np.full_like(max_abs, max_abs.max())
    scale = (np.maximum(max_abs, EPSILON) / QMAX).astype(np.float32)
    broadcast = scale.reshape((-1,) + (1,) * (moved.ndim - 1))
    quantized = np.clip(np.round(moved / broadcast), -QMAX, QMAX).astype(np.int8)
    return np.moveaxis(quantized, 0, channel_axis), scale


def _quantize_activation(data: relax.Expr, per_row: bool = False) -> tuple[relax.Expr, relax.Expr]:
    # max(max|x|, eps) as the largest of max(|x|, eps): the floor is fused into the reduction's kernel. Applied to
    # the reduced scalar, it was a kernel of its own per layer input, shared by the quantize and the dequantize.
    # Per row: the same over the last axis, kept as a column of scales.
    floored = R.maximum(R.abs(data), relax.const(EPSILON, "float32"))
    max_abs = R.max(floored, axis=-1, keepdims=True) if per_row else R.max(floored)
    scale = R.divide(max_abs, relax.const(float(QMAX), "float32"))
    # Multiply by the reciprocal, one scalar division: a division per element costs several multiply-adds.
    rounded = R.round(R.multiply(data, R.divide(relax.const(float(QMAX), "float32"), max_abs)))
    # No clip to [-127, 127]: max_abs >= |x| for every x it scales, so |x * (127 / max_abs)| <= 127 * (1 + 2^-23)^2,
    # which rounds to 127 at most. Two vector instructions a value fewer where the quantize runs (a layer's tile):
    # PP-OCR w8a8-dynamic 204.7 -> 202.1 us. (Static scales come from calibration and keep their clip.)
    return R.astype(rounded, "int8"), scale


def _dequantize(acc: relax.Expr, x_scale: relax.Expr, w_scale: np.ndarray) -> relax.Expr:
    """``acc * x_scale * w_scale``: the run-time scale (a scalar, or a column of per-row scales) and the constant
    per-channel scales apply one after the other, so the channel broadcast involves only a constant (which layout
    conversion can transform)."""
    return R.multiply(R.multiply(R.astype(acc, "float32"), x_scale), relax.const(w_scale.astype(np.float32)))
