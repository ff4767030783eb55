"""StaticQuantize: float32 conv2d / matmul with constant weights -> int8 x int8 -> int32 with calibrated scales.

Weights are quantized offline, symmetric, per output channel (or per tensor), like ``DynamicQuantize``. Each
layer's input is quantized with the constant scale calibration chose for it (``CalibrationRanges``):
``int8(clip(round(x / s), -127, 127))``, and the int32 accumulator is dequantized by one constant multiply
``acc * (s * w_scale[channel])``. No reduction runs at inference time; with constant scales the quantize of the
next layer's input is elementwise work that fuses into this layer's epilogue, and ``Requantize`` then moves it
ahead of pooling and reshapes so that activations travel between layers as int8.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from edgetvm.pipeline.calibration_stats import QMAX, CalibrationRanges
from edgetvm.pipeline.passes.dynamic_quantize import INT8_LAYERS
from edgetvm.pipeline.passes.quant_layers import rewrite_main


@tvm.transform.module_pass(opt_level=0, name="StaticQuantize")
class StaticQuantize:
    """Rewrite float32 ``relax.nn.conv2d`` and ``relax.matmul`` with constant weights to int8 compute whose
    activation scales are the constants of ``ranges``.

    Layers whose keys are in ``keep_float`` stay float; so does everything that is not a layer.
    """

    def __init__(
        self, ranges: CalibrationRanges, keep_float: frozenset[str] = frozenset(), per_tensor_weights: bool = False
    ):
        self.ranges = ranges
        self.keep_float = frozenset(keep_float)
        self.per_tensor_weights = per_tensor_weights

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_main(mod, self._rewrite)

    def _rewrite(self, call: relax.Call, key: str) -> relax.Expr:
        layer = INT8_LAYERS.get(call.op.name)
        if layer is None or key in self.keep_float:
            return call
        scale = np.float32(self.ranges.scale(key))
        built = layer(call, quantize_static(call.args[0], scale), call.args[1], self.per_tensor_weights)
        if built is None:
            return call
        acc, w_scale = built
        return R.multiply(R.astype(acc, "float32"), relax.const((scale * w_scale).astype(np.float32)))


def quantize_static(data: relax.Expr, scale: np.float32) -> relax.Expr:
    """``int8(clip(round(data / scale), -127, 127))``: the form ``Requantize`` recognises."""
    rounded = R.round(R.divide(data, relax.const(np.float32(scale))))
    return R.astype(R.clip(rounded, R.prim_value(-float(QMAX)), R.prim_value(float(QMAX))), "int8")
