"""x86 int8 conv2d kernel: pairs of input channels through ``vpmaddwd`` (AVX2), register-tiled like the float one.

The dot form (``int8_conv_layout``) leaves vectorisation to LLVM along input channels, which costs a horizontal
sum per output and reaches about the float kernel's speed. This kernel instead broadcasts a pair of adjacent
input-channel activations (int8 values held in int16) as one 32-bit word and multiplies it with eight output
channels' weight pairs in one ``vpmaddwd``: 16 multiply-adds an instruction where the float FMA does 8, no
horizontal sums. Weights are packed at compile time as ``[KH, KW, IC/2, OC, 2]`` int16.

A matmul runs the same way (``pair_dense``): a pair of the row's values broadcast against eight columns' weight
pairs. The trained CNN's 784 -> 64 dense layer: 1.5 -> 1.2 us where the dot form summed each column
horizontally; its ``w8a8-static`` build went 1.08x -> 1.13x of float, ``w8a8-dynamic`` 0.99x -> 1.02x (on a
Zen 4 host, before CPUs with VNNI took the quad kernel, ``x86_u8s8_quads``, for convs and matmuls whose input
channels come in fours; the pair kernel is theirs for the rest, and every AVX2 CPU's).

``pair_conv2d`` and ``pair_dense`` are the TE computes; ``PAIR_KERNEL`` marks their blocks for ``cpu_rules``;
``PMADDWD_8x2`` is the tensor intrinsic the schedule tensorizes the innermost ``8 x 2`` with.
"""

from __future__ import annotations

from tvm import te
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from edgetvm.kernels_schedules.channel_groups import grouped_conv2d, grouped_dense, multiply_add_desc

PAIR_KERNEL = "int16_pairs"  # block annotation "edgetvm.kernel"
PMADDWD_8x2 = "edgetvm_avx2_pmaddwd_8x2"


def pair_conv2d(data: te.Tensor, packed: te.Tensor, strides, padding, out_channels: int | None = None) -> te.Tensor:
    """NHWC int16 ``data`` x ``[KH, KW, IC/2, OC, 2]`` int16 ``packed`` -> NHWC int32 (``grouped_conv2d``)."""
    return grouped_conv2d(data, packed, strides, padding, out_channels, PAIR_KERNEL)


def pair_dense(data: te.Tensor, packed: te.Tensor, out_features: int | None = None) -> te.Tensor:
    """int16 ``data[M, K]`` x ``[K/2, N, 2]`` int16 ``packed`` -> int32 ``[M, N]`` (``grouped_dense``)."""
    return grouped_dense(data, packed, out_features, PAIR_KERNEL)


@T.prim_func(s_tir=True)
def _pmaddwd_impl(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((8, 2), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        # One expression: TVMScript turns a named intermediate into a local buffer, which TVM allocates with
        # TVMBackendAllocWorkspace, a call per tile.
        C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), 8), dtype="int16x16"),
            B.vload([0, 0], dtype="int16x16"),
            dtype="int32x8",
        )


TensorIntrin.register(PMADDWD_8x2, multiply_add_desc(2, "int16", "int16"), _pmaddwd_impl, override=True)
