"""Pass: int8 conv2d / matmul weights laid out for dot-product kernels (reduction innermost), widened where it pays.

After ``ConvertLayout`` an int8 x int8 -> int32 conv2d reads HWIO weights, a matmul [K, N] weights. Their default
schedule (``cpu_rules.schedule_reduction_tile`` in dot form) runs the reduction innermost over contiguous
activations and weights, which LLVM turns into the CPU's widening multiply-add: ``vpmaddwd`` on x86 AVX2
(``vpdpwssd`` with VNNI), ``sdot`` on aarch64 with the dot-product extension, ``smull``/``smlal`` otherwise. So
conv weights become OHWI.

On x86, ``vpmaddwd`` takes int16 pairs: the int8 activations and weights are held in int16 (values unchanged,
still int8 quantization), which saves a ``vpmovsxbw`` per operand in the inner loop; weights are widened once, at
compile time. Grouped and depthwise convs keep HWIO: their reduction has no input channels to run over. A matmul
becomes ``dense_dot`` over the weight transposed to [N, K]. On x86, convs with an even number of input channels
take the ``vpmaddwd`` pair kernel instead (``x86_int16_pairs``), from 8 of them, and so do matmuls with an even
K (``pair_dense``); on CPUs with VNNI, those whose input channels (K) come in fours take the ``vpdpbusd`` quad
kernel (``x86_u8s8_quads``), which reads the int8 activation as ``x + 128`` in uint8 and subtracts
``128 * sum(w)`` per output channel from its result.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard

from edgetvm.kernels_schedules.channel_groups import LANES, pack_groups
from edgetvm.kernels_schedules.te_kernels import TEKernelRewriter, pad_output_channels
from edgetvm.kernels_schedules.x86_int16_pairs import pair_conv2d, pair_dense
from edgetvm.kernels_schedules.x86_u8s8_quads import ZERO_POINT, quad_conv2d, quad_dense

# Below this many input channels (a network's first layer: 3) the dot loops are too short to vectorise and
# each output pays a horizontal sum: such convs keep HWIO and the output-channel-vectorised schedule.
MIN_DOT_CHANNELS = 16
# The pair kernel sums pairs of channels and needs no horizontal sum: 8 channels are 4 pairs (the x86 preset
# quantizes convs from 8 input channels: TargetPreset.int8_min_input_channels).
MIN_PAIR_CHANNELS = 8

_PATTERN = is_op("relax.nn.conv2d")(wildcard(), is_const()) | is_op("relax.matmul")(wildcard(), is_const())


def dense_dot(data, weight_nk):
    """``out[m, n] = sum_k data[m, k] * weight_nk[n, k]`` in int32: both operands contiguous along ``k``."""
    from tvm import te

    k = te.reduce_axis((0, data.shape[1]), "k")
    return te.compute(
        (data.shape[0], weight_nk.shape[0]),
        lambda m, n: te.sum(data[m, k].astype("int32") * weight_nk[n, k].astype("int32"), axis=k),
        name="dense_dot",
    )


@tvm.transform.module_pass(opt_level=0, name="Int8ConvLayout")
class Int8ConvLayout(TEKernelRewriter):
    """``widen``: hold int8 operands in int16 (x86). ``quads``: the CPU has VNNI's ``vpdpbusd``, for int8 convs
    whose input channels come in fours (``x86_u8s8_quads``)."""

    pattern = _PATTERN

    def __init__(self, widen: bool, quads: bool = False):
        self.widen = widen
        self.quads = quads

    def _quad_kernel(self, data, hwio: np.ndarray, attrs, out_channels: int) -> relax.Expr:
        """The x86 VNNI kernel (``x86_u8s8_quads``): the activation read as ``x + 128`` in uint8 (fused into the
        producer's quantize), and ``128 * sum(w)`` per output channel subtracted from its result."""
        packed = pack_groups(hwio, 4, "int8")
        strides = tuple(int(s) for s in attrs.strides)
        padding = tuple(int(p) for p in attrs.padding)
        acc = self.te_kernel(
            "conv2d_u8s8_quads",
            lambda x, w: quad_conv2d(x, w, strides, padding, out_channels),
            [(_unsigned(data), data.ty.shape, "uint8"), (relax.const(packed), packed.shape, "int8")],
            (strides, padding, out_channels),
        )
        return _corrected(acc, hwio[..., :out_channels].reshape(-1, out_channels), (1, 1, 1, -1))

    def _quad_dense(self, data, weight: np.ndarray) -> relax.Expr:
        """``data[M, K] @ weight[K, N]`` as the VNNI kernel: weights packed ``[K/4, N, 4]``, N padded to whole ymm
        registers; corrected as the conv."""
        features = weight.shape[1]
        packed = pack_groups(pad_output_channels(weight, LANES), 4, "int8")
        acc = self.te_kernel(
            "dense_u8s8_quads",
            lambda x, w: quad_dense(x, w, features),
            [(_unsigned(data), data.ty.shape, "uint8"), (relax.const(packed), packed.shape, "int8")],
            (features,),
        )
        return _corrected(acc, weight, (1, -1))

    def _pair_kernel(self, data, packed: np.ndarray, attrs, out_channels: int) -> relax.Expr:
        """The x86 pair kernel (``x86_int16_pairs``)."""
        strides = tuple(int(s) for s in attrs.strides)
        padding = tuple(int(p) for p in attrs.padding)
        return self.te_kernel(
            "conv2d_int16_pairs",
            lambda x, w: pair_conv2d(x, w, strides, padding, out_channels),
            [(relax.op.astype(data, "int16"), data.ty.shape, "int16"), (relax.const(packed), packed.shape, "int16")],
            (strides, padding, out_channels),
        )

    def _pair_dense(self, data, weight: np.ndarray) -> relax.Expr:
        """The x86 pair kernel of ``data[M, K] @ weight[K, N]``: weights packed ``[K/2, N, 2]``, N padded with zero
        columns to whole ymm registers."""
        features = weight.shape[1]
        packed = pack_groups(pad_output_channels(weight, LANES), 2, "int16")
        return self.te_kernel(
            "dense_int16_pairs",
            lambda x, w: pair_dense(x, w, features),
            [(relax.op.astype(data, "int16"), data.ty.shape, "int16"), (relax.const(packed), packed.shape, "int16")],
            (features,),
        )

    def _rewrite_matmul(self, call: relax.Call, data, weight) -> relax.Expr:
        """int8 ``x[M, K] @ W[K, N]``: the pair kernel on x86 where K is even, else a dot over ``W`` transposed to
        ``[N, K]`` (widened on x86)."""
        if not (data.ty.ndim == 2 and weight.ty.ndim == 2 and int(weight.ty.shape[0]) >= MIN_DOT_CHANNELS):
            return call
        if self.quads and int(weight.ty.shape[0]) % 4 == 0 and self._both_int8(data, weight):
            return self._quad_dense(data, weight.value.numpy())
        if self.widen and int(weight.ty.shape[0]) % 2 == 0:
            return self._pair_dense(data, weight.value.numpy())
        dtype = "int16" if self.widen else "int8"
        transposed = np.ascontiguousarray(weight.value.numpy().T).astype(dtype)
        operand = relax.op.astype(data, dtype) if self.widen else data
        args = [(operand, data.ty.shape, dtype), (relax.const(transposed), transposed.shape, dtype)]
        return self.te_kernel("dense_dot", dense_dot, args, ())

    @staticmethod
    def _both_int8(data, weight) -> bool:
        """The quad kernel's operands: int8 (int16 ones, imported ``w - w_zp``, may not fit a signed byte)."""
        return {str(data.ty.dtype), str(weight.ty.dtype)} == {"int8"}

    def _takes(self, data, weight) -> bool:
        """int8 operands; on x86 also int16 ones (imported quantized layers whose ``w - w_zp`` leaves int8): the
        x86 kernels hold operands in int16 anyway, and ``vpmaddwd`` pair sums of int16 products cannot overflow."""
        dtypes = {str(data.ty.dtype), str(weight.ty.dtype)}
        return dtypes == {"int8"} or (self.widen and dtypes == {"int16"})

    def rewrite(self, call: relax.Call, matches) -> relax.Expr:
        if not isinstance(call, relax.Call):  # the matcher can hand over the variable bound to the call
            return call
        data, weight = call.args
        if call.op.name == "relax.matmul":
            if self._takes(data, weight) and call.ty.dtype == "int32":
                return self._rewrite_matmul(call, data, weight)
            return call
        attrs = call.attrs
        if not (
            self._takes(data, weight)
            and str(attrs.kernel_layout) == "HWIO"
            and str(attrs.data_layout) == "NHWC"
            and int(attrs.groups) == 1
            and int(weight.ty.shape[2]) >= MIN_PAIR_CHANNELS
        ):
            return call
        hwio = weight.value.numpy()
        _, _, in_channels, out_channels = hwio.shape
        if (
            self.widen
            and in_channels % 2 == 0
            and all(int(d) == 1 for d in attrs.dilation)
            and str(attrs.out_dtype) == "int32"
        ):
            # Output channels padded with zero weights to whole ymm registers (BlazeFace's 28, 36, 42): the
            # padded lanes cost less than the dot form's horizontal sums.
            hwio = pad_output_channels(hwio, LANES)
            if self.quads and in_channels % 4 == 0 and self._both_int8(data, weight):
                return self._quad_kernel(data, hwio, attrs, out_channels)
            return self._pair_kernel(data, pack_groups(hwio, 2, "int16"), attrs, out_channels)
        if in_channels < MIN_DOT_CHANNELS:
            return call
        ohwi = np.ascontiguousarray(hwio.transpose(3, 0, 1, 2))
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


def _unsigned(data: relax.Expr) -> relax.Expr:
    """int8 ``data`` as the quad kernel reads it: ``data + 128`` in uint8."""
    return relax.op.astype(relax.op.add(relax.op.astype(data, "int16"), relax.const(ZERO_POINT, "int16")), "uint8")


def _corrected(acc: relax.Expr, weight_kn: np.ndarray, shape: tuple[int, ...]) -> relax.Expr:
    """The quad kernel's ``acc`` minus ``128 * sum(w)`` per output column of ``weight_kn`` ([reduction, outputs]),
    shaped ``shape`` to broadcast over it: the int8 result."""
    correction = ZERO_POINT * weight_kn.astype(np.int64).sum(axis=0)
    return relax.op.subtract(acc, relax.const(correction.astype(np.int32).reshape(shape)))
