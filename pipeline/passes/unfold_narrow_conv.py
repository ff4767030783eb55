"""UnfoldNarrowConv: a conv over few input channels (a first layer over RGB) becomes a conv over (kernel column,
channel) pairs, wide enough for the int8 kernels.

A KH x KW conv over C channels at column stride SW reads, for each output column, the KW * C input values of one
row that start at column ``ow * SW``: in NHWC (and NCHW) they are the same ``(kw, c)`` run for every output column.
Unfolding them into channels, ``X'[.., oh_in, ow, kw * C + c] = x_padded[.., oh_in, ow * SW + kw, c]`` (padded with
zero channels to an even count), makes the layer a KH x 1 conv over KW * C channels at column stride 1, with the
same output and the same multiply-adds (plus the zero channels'). BlazeFace's first conv, 5x5 stride 2 over 3
channels, becomes a 5x1 conv over 16: an int8 kernel has 8 channel pairs to multiply-add per kernel row (x86's
``vpmaddwd`` pair kernel, NEON's widening dot form) where it had none; over 3 channels it ran 2.8x slower than
float and stays float (the schemes' ``min_input_channels``).

The quantization passes then see an ordinary conv: its layer key is unchanged (no conv is added or removed), and
its input holds the same values as the original's plus zeros, so the calibrated range of the original input is
the unfolded input's too. Runs only where the layer is to be quantized: a float build keeps its conv.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from edgetvm.pipeline.passes.quant_layers import layer_macs, rewrite_main

# A layer doing fewer multiply-adds is not worth its unfolded copy and quantize pass: the trained MNIST CNN's
# second conv (3x3 over 8 channels on 14x14, 0.23 million) unfolded to 24 channels took its w8a8-dynamic build
# from 10.5 to 15.9 us. BlazeFace's first conv does 7.4 million.
MIN_MACS = 1 << 20


def unfolded_channels(channels: int, kernel_width: int) -> int:
    """Input channels of the unfolded conv: the ``(kw, c)`` pairs, rounded up to an even count."""
    return (channels * kernel_width + 1) // 2 * 2


@tvm.transform.module_pass(opt_level=0, name="UnfoldNarrowConv")
class UnfoldNarrowConv:
    """Unfold the one-group conv2d layers with fewer than ``min_input_channels`` input channels whose unfolded
    conv has at least that many and that do ``MIN_MACS`` multiply-adds or more (see the module docstring); layers
    whose keys are in ``skip`` stay as they are."""

    def __init__(self, min_input_channels: int, skip: frozenset[str] = frozenset()):
        self.min_input_channels = min_input_channels
        self.skip = frozenset(skip)

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_main(mod, self._rewrite)

    def _rewrite(self, call: relax.Call, key: str) -> relax.Expr:
        if call.op.name != "relax.nn.conv2d" or key in self.skip:
            return call
        shape = unfoldable(call, self.min_input_channels)
        if shape is None:
            return call
        return _unfold(call, *shape)


def unfoldable(call: relax.Call, min_input_channels: int) -> tuple[str, str, int, int, int] | None:
    """``(data_layout, kernel_layout, channels, kernel_width, output_width)`` of a conv2d the pass unfolds, or None."""
    attrs = call.attrs
    data_layout, kernel_layout = str(attrs.data_layout), str(attrs.kernel_layout)
    if (
        int(attrs.groups) != 1
        or [int(d) for d in attrs.dilation] != [1, 1]
        or data_layout not in ("NCHW", "NHWC")
        or kernel_layout not in ("OIHW", "HWIO")
        or str(attrs.out_layout) != data_layout
    ):
        return None
    macs = layer_macs(call)
    if macs is None or macs < MIN_MACS:
        return None
    weight = [int(d) for d in call.args[1].ty.shape]
    channels, kernel_width = weight[kernel_layout.index("I")], weight[kernel_layout.index("W")]
    if channels >= min_input_channels or kernel_width < 2:
        return None
    if unfolded_channels(channels, kernel_width) < min_input_channels:
        return None  # PP-OCR's 3x3 over 3 channels: 10 channels, too few pairs to pay for the unfolded copy
    return data_layout, kernel_layout, channels, kernel_width, int(call.ty.shape[data_layout.index("W")])


def _unfold(
    call: relax.Call, data_layout: str, kernel_layout: str, channels: int, kernel_width: int, output_width: int
) -> relax.Expr:
    attrs = call.attrs
    w_axis, c_axis = data_layout.index("W"), data_layout.index("C")
    stride_h, stride_w = (int(s) for s in attrs.strides)
    top, left, bottom, right = (int(p) for p in attrs.padding)
    wide = unfolded_channels(channels, kernel_width)

    data = call.args[0]
    if left or right:
        pad_width = [0] * 8
        pad_width[2 * w_axis : 2 * w_axis + 2] = [left, right]
        data = relax.op.nn.pad(data, pad_width)
    columns = [
        relax.op.strided_slice(
            data, axes=[w_axis], begin=[kw], end=[kw + stride_w * (output_width - 1) + 1], strides=[stride_w]
        )
        for kw in range(kernel_width)
    ]
    unfolded = relax.op.concat(columns, axis=c_axis)
    if wide > channels * kernel_width:
        pad_width = [0] * 8
        pad_width[2 * c_axis + 1] = wide - channels * kernel_width
        unfolded = relax.op.nn.pad(unfolded, pad_width)

    weight = call.args[1].value.numpy()
    if kernel_layout == "HWIO":  # [KH, KW, C, O] -> [KH, 1, KW * C (+ zeros), O]
        kh, _, _, out_channels = weight.shape
        folded = weight.reshape(kh, 1, kernel_width * channels, out_channels)
        folded = np.pad(folded, ((0, 0), (0, 0), (0, wide - kernel_width * channels), (0, 0)))
    else:  # OIHW: [O, C, KH, KW] -> [O, KW * C (+ zeros), KH, 1], channel kw * C + c
        out_channels, _, kh, _ = weight.shape
        folded = weight.transpose(0, 3, 1, 2).reshape(out_channels, kernel_width * channels, kh, 1)
        folded = np.pad(folded, ((0, 0), (0, wide - kernel_width * channels), (0, 0), (0, 0)))
    return relax.op.nn.conv2d(
        unfolded,
        relax.const(np.ascontiguousarray(folded, dtype=weight.dtype)),
        strides=[stride_h, 1],
        padding=[top, 0, bottom, 0],
        dilation=[1, 1],
        groups=1,
        data_layout=data_layout,
        kernel_layout=kernel_layout,
        out_layout=data_layout,
        out_dtype=None if str(attrs.out_dtype) in ("", "void", "None") else str(attrs.out_dtype),
    )
