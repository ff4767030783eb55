"""The Relax pipeline edgetvm compiles with: TVM's CPU pipeline plus NHWC layout and default schedules."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from edgetvm.kernels_schedules.apply_schedules import ApplyCPUSchedules, ScheduleReport
from edgetvm.kernels_schedules.clip_to_min_max import ClipToMinMax
from edgetvm.kernels_schedules.cpu_rules import CPUFacts
from edgetvm.kernels_schedules.duplicate_scalar_ops import DuplicateScalarOps
from edgetvm.kernels_schedules.flatten_into_weights import FlattenIntoWeights
from edgetvm.kernels_schedules.fold_affine import FoldAffine
from edgetvm.kernels_schedules.int8_conv_layout import Int8ConvLayout
from edgetvm.kernels_schedules.join_channel_reductions import JoinChannelReductions
from edgetvm.kernels_schedules.join_quantize_outputs import JoinQuantizeOutputs
from edgetvm.kernels_schedules.kernel_passes import kernel_passes
from edgetvm.kernels_schedules.pack_small_results import PackSmallResults
from edgetvm.kernels_schedules.pad_conv_channels import PadConvChannels
from edgetvm.kernels_schedules.quantize_in_consumer import QuantizeInConsumer
from edgetvm.kernels_schedules.split_broadcast_quantize import SplitBroadcastQuantize
from edgetvm.kernels_schedules.unfold_columns_kernel import UnfoldColumnsKernel
from edgetvm.kernels_schedules.vectorizable_intrinsics import register as register_vectorizable_intrinsics

# Output channels innermost in activations and weights: what the register-tiled kernels vectorise over.
CONV_LAYOUTS = {"relax.nn.conv2d": ["NHWC", "HWIO"]}
# Output channels are padded to whole 8-lane vectors at most: on AVX-512, 24 channels run as 3 ymm registers
# rather than as 32 padded channels in 2 zmm (BlazeFace's 1x1 24->24 convs at 64x64 took 2.6x longer that way).
PAD_LANES = 8


def layout_passes(target: tvm.target.Target) -> list:
    facts = CPUFacts.of(target)
    return [
        relax.transform.DecomposeOpsForInference(),
        ClipToMinMax(),
        relax.transform.FoldConstant(),  # batch norm's sqrt(var + eps) becomes the constant FoldAffine needs
        FoldAffine(),
        relax.transform.ConvertLayout(CONV_LAYOUTS),
        relax.transform.FoldConstant(),
        FlattenIntoWeights(),
        Int8ConvLayout(widen=facts.is_x86, quads=facts.vnni),
        UnfoldColumnsKernel(),  # after the int8 layout: the quads kernel's uint8 conversion moves before it too
        PadConvChannels(lanes=min(facts.lanes("float32"), PAD_LANES)),
    ]


def fusion_passes(target: tvm.target.Target) -> list:
    """TVM's legalization and fusion, with one-value operations copied for each user before it (for FuseOps to fuse
    each copy into its user) and, between FuseOps and FuseTIR, the per-channel reductions of one map joined, a layer's
    output and its quantize joined, a one-pixel layer's kernel split from the map quantize FuseOps gave it, and a
    quantize joined to its int8 layer."""
    passes = cpu_generic.legalize_passes(target)
    fuse_tir = next(i for i, p in enumerate(passes) if p.info.name == "FuseTIR")
    return [
        DuplicateScalarOps(),
        *passes[:fuse_tir],
        JoinChannelReductions(),  # first: the per-channel max|h| a gate's scale needs then comes before the gate
        JoinQuantizeOutputs(),
        SplitBroadcastQuantize(),  # before QuantizeInConsumer, which takes the map's quantize into its layer
        QuantizeInConsumer(),
        *passes[fuse_tir:],
    ]


def relax_pipeline(target: tvm.target.Target, report: ScheduleReport | None = None, schedules: bool = True, tuned=None):
    """A module pass for ``tvm.compile(..., relax_pipeline=...)``.

    ``schedules=False`` gives TVM's own CPU pipeline (naive loops), kept for comparisons and as an escape hatch.
    ``tuned`` (an ``ApplyTunedSchedules`` pass) schedules the functions a tuning database has records for
    first; the default schedules take the rest.
    """

    register_vectorizable_intrinsics()  # before TIR lowering vectorizes the scheduled loops

    @tvm.transform.module_pass(opt_level=0, name="EdgeTVMPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            passes = cpu_generic.library_dispatch_passes(target)
            if schedules:
                passes += layout_passes(target)
            passes += fusion_passes(target) if schedules else cpu_generic.legalize_passes(target)
            if tuned is not None:
                passes.append(tuned)
            if schedules:
                passes.append(ApplyCPUSchedules(target, report))
                passes += kernel_passes()
                passes.append(PackSmallResults())
            passes += cpu_generic.dataflow_lower_passes(target) + cpu_generic.finalize_passes(target)
            # A kernel with several results (a layer and its output's max|x|, two reductions of one map) leaves a
            # tuple of its output tensors that nothing reads once lowering has bound each result to its tensor;
            # the VM still builds it every run (vm.builtin.make_tuple, ~0.1 us). PP-OCR's w8a8-dynamic had 27.
            passes.append(tvm.relax.transform.DeadCodeElimination())
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
