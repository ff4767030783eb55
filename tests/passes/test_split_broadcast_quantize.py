"""SplitBroadcastQuantize on a squeeze-excite block of the static scheme: the gate's kernel no longer quantizes the
gated map; the int8 layer after it does, in its tile, with the same numbers."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from edgetvm.kernels_schedules import pipeline as kernels_pipeline
from edgetvm.kernels_schedules.apply_schedules import ScheduleReport
from edgetvm.kernels_schedules.fused_calls import kernel_calls
from edgetvm.pipeline.passes.static_quantize import quantize_static

X_SHAPE = (1, 12, 12, 16)  # NHWC, as the layout passes leave a network: no transposes around the layers
HOST = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
RPI4 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"})
_LEFT_OUT = "SplitBroadcastQuantize"


def _gated_layer(layer_is_int8: bool = True) -> tvm.IRModule:
    """h = relu(x); s = clip(conv1x1(mean(h)) + b, 0, 1) per channel; the int8 1x1 conv 16 -> 24 of
    quantize(h * s), dequantized (or, without ``layer_is_int8``, the quantized map returned as it is)."""
    rng = np.random.default_rng(3)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(X_SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(R.nn.relu(x))
            squeeze = R.mean(h, axis=[1, 2], keepdims=True)
            excite = _nhwc_conv(squeeze, relax.const(rng.standard_normal((16, 1, 1, 16)).astype("float32") / 4))
            s = bb.emit(R.clip(R.add(excite, relax.const(np.full((1, 1, 1, 16), 0.5, "float32"))), 0, 1))
            quantized = bb.emit(quantize_static(R.multiply(h, s), np.float32(3.0 / 127)))
            if layer_is_int8:
                weight = relax.const(rng.integers(-127, 128, (24, 1, 1, 16)).astype("int8"))
                acc = _nhwc_conv(quantized, weight, out_dtype="int32")
                out = bb.emit_output(R.multiply(R.astype(acc, "float32"), relax.const(np.float32(1e-3))))
            else:
                out = bb.emit_output(quantized)
        bb.emit_func_output(out)
    return bb.get()


def _nhwc_conv(data, weight, out_dtype: str = "float32"):
    return R.nn.conv2d(data, weight, data_layout="NHWC", kernel_layout="OHWI", out_dtype=out_dtype)


def _int8_maps(calls: dict[str, relax.Type]) -> list[str]:
    return [n for n, ty in calls.items() if isinstance(ty, relax.TensorType) and ty.dtype in ("int8", "uint8")]


@pytest.mark.parametrize("target", [HOST, RPI4], ids=["host", "rpi4"])
def test_the_gate_kernel_returns_the_gates_and_the_layer_quantizes(fusion_stage, target):
    mod = _gated_layer()
    apart = kernel_calls(fusion_stage.run(mod, target, fusion_stage.without(_LEFT_OUT)(target)))
    split = kernel_calls(fusion_stage.run(mod, target, kernels_pipeline.fusion_passes(target)))
    assert len(_int8_maps(apart)) == 1, apart  # the gate's kernel writes the quantized map
    assert _int8_maps(split) == [], split
    (gate,) = [name for name in split if name.endswith("_gate")]
    assert tuple(split[gate].shape) == (1, 1, 1, 16) and split[gate].dtype == "float32"
    assert [name for name in split if name.endswith("_quantizing")], split
    assert len(split) == len(apart)  # the map's quantize went into the layer: as many kernels as before


def test_same_numbers_as_the_gate_kernel_quantizing(fusion_stage, monkeypatch):
    mod = _gated_layer()
    report = ScheduleReport()
    split = relax.VirtualMachine(
        tvm.compile(mod, target=HOST, relax_pipeline=kernels_pipeline.relax_pipeline(HOST, report)), tvm.cpu()
    )
    assert report.naive() == [], report.functions
    monkeypatch.setattr(kernels_pipeline, "fusion_passes", fusion_stage.without(_LEFT_OUT))
    apart = relax.VirtualMachine(
        tvm.compile(mod, target=HOST, relax_pipeline=kernels_pipeline.relax_pipeline(HOST)), tvm.cpu()
    )
    for seed in range(3):
        x = tvm.runtime.tensor(np.random.default_rng(seed).standard_normal(X_SHAPE).astype("float32"))
        got = split["main"](x).numpy()
        np.testing.assert_array_equal(got, apart["main"](x).numpy())
        assert np.abs(got).max() > 0


def test_a_quantized_map_no_int8_layer_reads_stays_in_the_gate_kernel(fusion_stage):
    mod = _gated_layer(layer_is_int8=False)
    apart = kernel_calls(fusion_stage.run(mod, HOST, fusion_stage.without(_LEFT_OUT)(HOST)))
    split = kernel_calls(fusion_stage.run(mod, HOST, kernels_pipeline.fusion_passes(HOST)))
    assert split == apart


def test_a_layer_s_own_requantize_is_not_split(fusion_stage):
    """A conv whose epilogue quantizes its own output (the same size) keeps it: nothing is broadcast."""
    rng = np.random.default_rng(4)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(X_SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = _nhwc_conv(x, relax.const(rng.standard_normal((16, 1, 1, 16)).astype("float32")))
            quantized = bb.emit(quantize_static(R.nn.relu(conv), np.float32(0.05)))
            weight = relax.const(rng.integers(-127, 128, (24, 1, 1, 16)).astype("int8"))
            out = bb.emit_output(R.astype(_nhwc_conv(quantized, weight, out_dtype="int32"), "float32"))
        bb.emit_func_output(out)
    mod = bb.get()
    apart = kernel_calls(fusion_stage.run(mod, HOST, fusion_stage.without(_LEFT_OUT)(HOST)))
    split = kernel_calls(fusion_stage.run(mod, HOST, kernels_pipeline.fusion_passes(HOST)))
    assert split == apart
