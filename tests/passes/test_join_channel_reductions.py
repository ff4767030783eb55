"""JoinChannelReductions: a squeeze-excite gated layer quantized at run time reduces its map once per channel,
for the squeeze's mean and the scale's max|h| together, with the same numbers as the two kernels it replaces;
its gate's kernel computes the scale too (``join_quantize_outputs``)."""

import numpy as np
import pytest
import tvm
from tvm import relax, te, topi
from tvm.script import relax as R

from edgetvm.kernels_schedules import pipeline as kernels_pipeline
from edgetvm.kernels_schedules.apply_schedules import ApplyCPUSchedules, ScheduleReport
from edgetvm.kernels_schedules.cpu_rules import schedule_function
from edgetvm.kernels_schedules.fused_calls import kernel_calls
from edgetvm.pipeline.quantize import PIPELINES, PipelineOptions
from edgetvm.pipeline.schemes import get_scheme

HOST = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
RPI4 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"})
# (input channels, map channels, rows, columns): a map of 512 elements (reduced serially) and one of 28800 (in
# parallel chunks), whose 200 channels need 50 accumulators for the two reductions: more than a CPU's registers
SMALL = (4, 8, 8, 8)
LARGE = (8, 200, 12, 12)


def _gated_layer(dims: tuple[int, int, int, int]) -> tvm.IRModule:
    """h = relu(conv 1x1 of x); s = clip(conv 1x1 of mean(h) + 0.5, 0, 1) per channel (a squeeze-excite gate);
    out = conv 1x1 (to 16) of h * s, quantized at run time from h and s (``DynamicGatedInput``)."""
    cin, channels, rows, cols = dims
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, cin, rows, cols), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w1 = relax.const(rng.standard_normal((channels, cin, 1, 1)).astype("float32"))
            h = bb.emit(R.nn.relu(R.nn.conv2d(x, w1)))
            squeezed = bb.emit(R.mean(h, axis=[2, 3], keepdims=True))
            excite = relax.const(0.1 * rng.standard_normal((channels, channels, 1, 1)).astype("float32"))
            s = bb.emit(R.clip(R.add(R.nn.conv2d(squeezed, excite), R.const(0.5)), 0.0, 1.0))
            w2 = relax.const(rng.standard_normal((16, channels, 1, 1)).astype("float32"))
            out = bb.emit_output(R.nn.conv2d(R.multiply(h, s), w2))
        bb.emit_func_output(out)
    passes = PIPELINES["w8a8-dynamic"](PipelineOptions(get_scheme("w8a8-dynamic")))
    return tvm.transform.Sequential(passes)(bb.get())


_LEFT_OUT = "JoinChannelReductions"


def _per_channel_results(mod: tvm.IRModule) -> list[str]:
    """The kernels returning one value per channel of the 4-d map (alone, or among others)."""
    found = []
    for name, ty in kernel_calls(mod).items():
        types = ty.fields if isinstance(ty, relax.TupleType) else [ty]
        if any(len(t.shape) == 4 and [int(d) for d in t.shape][:3] == [1, 1, 1] for t in types):
            found.append(name)
    return found


@pytest.mark.parametrize("dims", [SMALL, LARGE], ids=["small", "large"])
def test_one_kernel_reduces_the_map_for_the_mean_and_the_scale(fusion_stage, dims):
    mod = _gated_layer(dims)
    apart = fusion_stage.run(mod, HOST, fusion_stage.without(_LEFT_OUT)(HOST))
    joined = fusion_stage.run(mod, HOST, kernels_pipeline.fusion_passes(HOST))
    assert len(_per_channel_results(apart)) == 3, kernel_calls(apart)  # mean, max|h|, the gate
    reductions = [n for n in _per_channel_results(joined) if "mean" in n]
    assert len(reductions) == 1 and "max" in reductions[0], kernel_calls(joined)
    assert isinstance(kernel_calls(joined)[reductions[0]], relax.TupleType)
    # the gate's kernel also computes the scale, max(s * max|h|), from the map's per-channel max|h|
    (gate,) = [n for n in _per_channel_results(joined) if n not in reductions]
    assert "_quantized" in gate, kernel_calls(joined)
    assert len(kernel_calls(joined)) == len(kernel_calls(apart)) - 2


@pytest.mark.parametrize("target", [HOST, RPI4], ids=["host", "rpi4"])
@pytest.mark.parametrize("dims", [SMALL, LARGE], ids=["small", "large"])
def test_the_joined_reductions_have_a_rule_of_their_own(fusion_stage, target, dims):
    report = ScheduleReport()
    with target:
        fused = fusion_stage.run(_gated_layer(dims), target, kernels_pipeline.fusion_passes(target))
        ApplyCPUSchedules(target, report)(fused)
    (name,) = [n for n in report.functions if "mean" in n]
    assert report.functions[name] == "channel-reduction", report.to_json()
    assert not report.naive(), report.to_json()


@pytest.mark.parametrize("dims", [SMALL, LARGE], ids=["small", "large"])
def test_same_numbers_as_the_kernels_apart(fusion_stage, monkeypatch, dims):
    mod = _gated_layer(dims)
    pipeline = kernels_pipeline.relax_pipeline(HOST)
    joined = relax.VirtualMachine(tvm.compile(mod, target=HOST, relax_pipeline=pipeline), tvm.cpu())
    monkeypatch.setattr(kernels_pipeline, "fusion_passes", fusion_stage.without(_LEFT_OUT))
    pipeline = kernels_pipeline.relax_pipeline(HOST)
    apart = relax.VirtualMachine(tvm.compile(mod, target=HOST, relax_pipeline=pipeline), tvm.cpu())
    shape = (1, dims[0], dims[2], dims[3])
    for seed in range(3):
        x = tvm.runtime.tensor(np.random.default_rng(seed).standard_normal(shape).astype("float32"))
        np.testing.assert_array_equal(joined["main"](x).numpy(), apart["main"](x).numpy())


def test_a_softmax_s_max_and_sum_are_not_taken_for_joined_reductions():
    """Both reduce the same rows to one value each, but the sum reads exp(x - max): one pass cannot do both."""
    x = te.placeholder((1, 2), "float32", "x")
    func = te.create_prim_func([x, topi.nn.softmax(x, axis=-1)])
    sch, rule = schedule_function(func, HOST)
    assert rule != "channel-reduction"
    lib = tvm.compile(sch.mod, target=HOST)["main"]
    data = np.array([[0.5, -1.5]], "float32")
    out = tvm.runtime.tensor(np.zeros((1, 2), "float32"))
    lib(tvm.runtime.tensor(data), out)
    expected = np.exp(data - data.max()) / np.exp(data - data.max()).sum()
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
