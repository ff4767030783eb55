"""The x86 int8 kernels' shared shape: groups of input channels against eight output channels per instruction.

Both x86 int8 kernels multiply a small group of consecutive input channels (2 in ``vpmaddwd``/``vpdpwssd``, 4 in
``vpdpbusd``), broadcast as one 32-bit word, with eight output channels' weight groups, and sum each group into an
int32 lane. Weights are packed at compile time with the group innermost: ``[KH, KW, IC/g, OC, g]`` for a conv,
``[K/g, N, g]`` for a matmul. ``grouped_conv2d`` and ``grouped_dense`` are their TE computes, ``multiply_add_desc``
the tensor intrinsic description of one instruction; the kernels (``x86_int16_pairs``, ``x86_u8s8_quads``) give
the operand types, the padding value and the LLVM intrinsic.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te, topi
from tvm.script import tirx as T

LANES = 8  # int32 accumulators in one ymm register


def pack_groups(weight: np.ndarray, group: int, dtype: str) -> np.ndarray:
    """``weight[..., K, N]`` (HWIO, or a matmul's [K, N]) packed for the kernels: ``[..., K/group, N, group]``,
    contiguous, in ``dtype``."""
    *outer, reduced, columns = weight.shape
    grouped = weight.reshape(*outer, reduced // group, group, columns)
    return np.ascontiguousarray(np.swapaxes(grouped, -1, -2)).astype(dtype)


def grouped_conv2d(
    data: te.Tensor, packed: te.Tensor, strides, padding, out_channels: int | None, kernel: str, pad_value: int = 0
) -> te.Tensor:
    """NHWC ``data`` x ``[KH, KW, IC/g, OC, g]`` ``packed`` -> NHWC int32; the block is annotated ``kernel`` and
    named after its last word (``conv2d_nhwc_pairs``: names are part of a tuning record's workload).

    ``out_channels`` below the packed OC (weights padded with zero channels to whole registers): the kernel
    computes the padded channels and the result keeps the first ``out_channels``. ``pad_value``: what the
    spatial padding holds (the quad kernel's unsigned zero is 128).
    """
    keep = out_channels
    stem = kernel.rsplit("_", 1)[-1]
    n, height, width, _ = data.shape
    kh, kw, groups, out_channels, group = packed.shape
    top, left, bottom, right = (int(p) for p in padding)
    pad = tvm.tirx.const(pad_value, data.dtype)
    padded = topi.nn.pad(data, [0, top, left, 0], [0, bottom, right, 0], pad, name="pad_temp")
    sh, sw = (int(s) for s in strides)
    out_h = (height + top + bottom - kh) // sh + 1
    out_w = (width + left + right - kw) // sw + 1
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    rc = te.reduce_axis((0, groups), "rc")
    rk = te.reduce_axis((0, group), "rk")
    conv = te.compute(
        (n, out_h, out_w, out_channels),
        lambda b, y, x, o: te.sum(
            padded[b, y * sh + ry, x * sw + rx, rc * group + rk].astype("int32")
            * packed[ry, rx, rc, o, rk].astype("int32"),
            axis=[ry, rx, rc, rk],
        ),
        name=f"conv2d_nhwc_{stem}",
        attrs={"edgetvm.kernel": kernel},
    )
    if keep is None or keep == int(out_channels):
        return conv
    channels = tvm.tirx.const(keep, "int64")  # as LegalizeOps writes extents: FuseTIR matches buffers exactly
    return te.compute((n, out_h, out_w, channels), lambda b, y, x, o: conv[b, y, x, o], name=f"conv2d_nhwc_{stem}_crop")


def grouped_dense(data: te.Tensor, packed: te.Tensor, out_features: int | None, kernel: str) -> te.Tensor:
    """``data[M, K]`` x ``[K/g, N, g]`` ``packed`` -> int32 ``[M, N]``: a group of the row's values broadcast
    against eight columns' weight groups. ``out_features`` below the packed N: the first ``out_features``."""
    keep = out_features
    stem = kernel.rsplit("_", 1)[-1]
    groups, out_features, group = packed.shape
    rc = te.reduce_axis((0, groups), "rc")
    rk = te.reduce_axis((0, group), "rk")
    dense = te.compute(
        (data.shape[0], out_features),
        lambda m, o: te.sum(
            data[m, rc * group + rk].astype("int32") * packed[rc, o, rk].astype("int32"), axis=[rc, rk]
        ),
        name=f"dense_{stem}",
        attrs={"edgetvm.kernel": kernel},
    )
    if keep is None or keep == int(out_features):
        return dense
    columns = tvm.tirx.const(keep, "int64")
    return te.compute((data.shape[0], columns), lambda m, o: dense[m, o], name=f"dense_{stem}_crop")


def multiply_add_desc(group: int, a_dtype: str, b_dtype: str) -> tvm.tirx.PrimFunc:
    """What one instruction computes: ``C[i] += sum_k A[k] * B[i, k]`` over ``LANES`` lanes and a group of ``group``,
    ``A`` the broadcast activations, ``B`` the lanes' weights."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((group,), a_dtype, offset_factor=1),
        B: T.Buffer((LANES, group), b_dtype, offset_factor=1),
        C: T.Buffer((LANES,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:group], B[0:LANES, 0:group])
            T.writes(C[0:LANES])
            for i in T.serial(0, LANES):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc
