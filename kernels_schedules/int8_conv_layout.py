"""Pass: int8 conv2d weights laid out for dot-product kernels (input channels innermost), widened where it pays.

After ``ConvertLayout`` an int8 x int8 -> int32 conv2d reads HWIO weights. Its default schedule
(``cpu_rules.schedule_dot_tile``) runs the input-channel reduction innermost over contiguous activations and
weights, which LLVM turns into the CPU's widening multiply-add: ``vpmaddwd`` on x86 AVX2 (``vpdpwssd`` with VNNI),
``sdot`` on aarch64 with the dot-product extension, ``smull``/``smlal`` otherwise. So the weights become OHWI.

On x86, ``vpmaddwd`` takes int16 pairs: the int8 activations and weights are held in int16 (values unchanged,
still int8 quantization), which saves a ``vpmovsxbw`` per operand in the inner loop; weights are widened once, at
compile time. Grouped and depthwise convs keep HWIO: their reduction has no input channels to run over.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

_PATTERN = is_op("relax.nn.conv2d")(wildcard(), is_const())


@tvm.transform.module_pass(opt_level=0, name="Int8ConvLayout")
class Int8ConvLayout:
    """``widen``: hold int8 operands in int16 (x86)."""

    def __init__(self, widen: bool):
        self.widen = widen

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updated = mod.clone()
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                updated[gvar] = rewrite_call(_PATTERN, self._rewrite, func)
        return updated

    def _rewrite(self, call: relax.Call, _matches) -> relax.Expr:
        data, weight = call.args
        attrs = call.attrs
        if not (
            data.ty.dtype == "int8"
            and weight.ty.dtype == "int8"
            and str(attrs.kernel_layout) == "HWIO"
            and str(attrs.data_layout) == "NHWC"
            and int(attrs.groups) == 1
        ):
            return call
        ohwi = np.ascontiguousarray(weight.value.numpy().transpose(3, 0, 1, 2))
        if self.widen:
            data = relax.op.astype(data, "int16")
            ohwi = ohwi.astype(np.int16)
        return relax.op.nn.conv2d(
            data,
            relax.const(ohwi),
            strides=attrs.strides,
            padding=attrs.padding,
            dilation=attrs.dilation,
            groups=1,
            data_layout="NHWC",
            kernel_layout="OHWI",
            out_layout=str(attrs.out_layout) or "NHWC",
            out_dtype=str(attrs.out_dtype),
        )
