"""Pass: float convs whose output channels fill no whole vector registers computed on zero-padded weights.

The register-tiled kernel (``cpu_rules``) vectorises over output channels. With 42 of them (BlazeFace) no tile
width divides the axis and the kernel falls back to scalar code; with 28 it runs 3.5 vectors, half a register
wasted and the tile's rows cut to fit. This pass gives such a conv2d (NHWC, HWIO constant weights, one group)
weights padded with zero output channels to a whole number of vectors: the kernel computes the padded channels
into its accumulator tile and the result keeps the real ones, in the same fused function as its epilogue.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard

from edgetvm.kernels_schedules.te_kernels import TEKernelRewriter, pad_output_channels

_FLOAT = ("float32",)


def padded_conv2d(data, weight, strides, padding, dilation, out_channels: int):
    """NHWC ``data`` x HWIO ``weight`` (output channels padded) -> NHWC with the first ``out_channels``."""
    from tvm import te, topi

    n, height, width, _ = data.shape
    kh, kw, in_channels, padded_channels = weight.shape
    top, left, bottom, right = (int(p) for p in padding)
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    padded = topi.nn.pad(data, [0, top, left, 0], [0, bottom, right, 0], name="pad_temp")
    out_h = (height + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (width + left + right - (kw - 1) * dw - 1) // sw + 1
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    rc = te.reduce_axis((0, in_channels), "rc")
    conv = te.compute(
        (n, out_h, out_w, padded_channels),
        lambda b, y, x, o: te.sum(
            padded[b, y * sh + ry * dh, x * sw + rx * dw, rc] * weight[ry, rx, rc, o], axis=[ry, rx, rc]
        ),
        name="conv2d_nhwc",
    )
    channels = tvm.tirx.const(out_channels, "int64")  # as LegalizeOps writes extents: FuseTIR matches buffers
    return te.compute((n, out_h, out_w, channels), lambda b, y, x, o: conv[b, y, x, o], name="conv2d_nhwc_crop")


@tvm.transform.module_pass(opt_level=0, name="PadConvChannels")
class PadConvChannels(TEKernelRewriter):
    """``lanes``: float32 lanes of the target's vector registers (8 with AVX2, 4 with NEON)."""

    pattern = is_op("relax.nn.conv2d")(wildcard(), is_const())

    def __init__(self, lanes: int):
        self.lanes = lanes

    def rewrite(self, call: relax.Call, matches) -> relax.Expr:
        if not isinstance(call, relax.Call):
            return call
        data, weight = call.args
        attrs = call.attrs
        if not (
            str(data.ty.dtype) in _FLOAT
            and str(weight.ty.dtype) in _FLOAT
            and str(attrs.out_dtype) in ("", "None", "void", *_FLOAT)
            and str(attrs.data_layout) == "NHWC"
            and str(attrs.kernel_layout) == "HWIO"
            and (str(attrs.out_layout) or "NHWC") == "NHWC"
            and int(attrs.groups) == 1
        ):
            return call
        hwio = weight.value.numpy()
        out_channels = hwio.shape[3]
        if out_channels <= self.lanes or out_channels % self.lanes == 0:
            return call
        hwio = pad_output_channels(hwio, self.lanes)
        strides = tuple(int(s) for s in attrs.strides)
        padding = tuple(int(p) for p in attrs.padding)
        dilation = tuple(int(d) for d in attrs.dilation)
        dtype = str(data.ty.dtype)
        return self.te_kernel(
            "conv2d_padded_channels",
            lambda x, w: padded_conv2d(x, w, strides, padding, dilation, out_channels),
            [(data, data.ty.shape, dtype), (relax.const(hwio), hwio.shape, dtype)],
            (strides, padding, dilation, out_channels),
        )
