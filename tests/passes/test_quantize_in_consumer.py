"""QuantizeInConsumer: the int8 layer after a dynamic quantize computes that quantize in its own kernel, in each
tile, with the same numbers as the two kernels it replaces."""

import numpy as np
import pytest
import tvm
from tvm import relax, tirx

from edgetvm.kernels_schedules import pipeline as kernels_pipeline
from edgetvm.kernels_schedules.apply_schedules import ApplyCPUSchedules, ScheduleReport
from edgetvm.kernels_schedules.fused_calls import kernel_calls
from edgetvm.kernels_schedules.share_parallel_launches import BARRIER, LAUNCH_POINT, share_launches

HOST = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
RPI4 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"})


_LEFT_OUT = "QuantizeInConsumer"


def _int8_results(calls: dict[str, relax.Type]) -> list[str]:
    return [name for name, ty in calls.items() if isinstance(ty, relax.TensorType) and ty.dtype in ("int8", "uint8")]


def test_no_kernel_writes_the_int8_input_of_a_layer(fusion_stage):
    mod = fusion_stage.dynamic_layer()
    apart = kernel_calls(fusion_stage.run(mod, HOST, fusion_stage.without(_LEFT_OUT)(HOST)))
    joined = kernel_calls(fusion_stage.run(mod, HOST, kernels_pipeline.fusion_passes(HOST)))
    assert len(_int8_results(apart)) == 1, apart  # the quantize, a kernel of its own
    assert _int8_results(joined) == [], joined
    assert len(joined) == len(apart) - 1
    assert [name for name in joined if name.endswith("_quantizing")], joined


@pytest.mark.parametrize("out_channels", [16, 104, 200])
def test_same_numbers_as_a_quantize_kernel(fusion_stage, monkeypatch, out_channels):
    """In the tile (16 output channels: one tile), once per task before its channel tiles (104: thirteen tiles of
    one vector) or beside the tiles in the same kernel (200: several tiles of five vectors)."""
    mod = fusion_stage.dynamic_layer(out_channels)
    joined = relax.VirtualMachine(
        tvm.compile(mod, target=HOST, relax_pipeline=kernels_pipeline.relax_pipeline(HOST)), tvm.cpu()
    )
    monkeypatch.setattr(kernels_pipeline, "fusion_passes", fusion_stage.without(_LEFT_OUT))
    apart = relax.VirtualMachine(
        tvm.compile(mod, target=HOST, relax_pipeline=kernels_pipeline.relax_pipeline(HOST)), tvm.cpu()
    )
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal(fusion_stage.DYNAMIC_LAYER_INPUT).astype("float32")
        x = tvm.runtime.tensor(x)
        np.testing.assert_array_equal(joined["main"](x).numpy(), apart["main"](x).numpy())


def _outer_loops_of_writes(func: tirx.PrimFunc) -> dict[str, set]:
    """For each dtype written by a block, the outermost loops of the blocks that write it."""
    found: dict[str, set] = {}

    def visit(stmt, outer):
        if isinstance(stmt, tirx.For):
            visit(stmt.body, outer if outer is not None else stmt)
        elif isinstance(stmt, tirx.SeqStmt):
            for inner in stmt.seq:
                visit(inner, outer)
        elif isinstance(stmt, tvm.s_tir.SBlockRealize):
            for region in stmt.block.writes:
                found.setdefault(str(region.source.dtype), set()).add(outer)
            visit(stmt.block.body, outer)
        elif hasattr(stmt, "body"):
            visit(stmt.body, outer)

    visit(func.body, None)
    return found


def _scheduled(fusion_stage, target, out_channels: int) -> tuple[tirx.PrimFunc, str]:
    report = ScheduleReport()
    with target:
        scheduled = ApplyCPUSchedules(target, report)(
            fusion_stage.run(fusion_stage.dynamic_layer(out_channels), target, kernels_pipeline.fusion_passes(target))
        )
    (name,) = [gv.name_hint for gv in scheduled.get_global_vars() if gv.name_hint.endswith("_quantizing")]
    return scheduled[name], report.functions[name]


def test_the_quantize_runs_in_the_layer_s_tile(fusion_stage):
    """The quantize is computed under the loop the layer's tiles share between the cores, for the tile's own
    pixels: no separate pass over the map, no int8 map written by one core and read by the other."""
    func, rule = _scheduled(fusion_stage, HOST, 16)
    assert rule == "reduction-tile"
    outer = _outer_loops_of_writes(func)
    quantized = outer.get("uint8", set()) | outer.get("int8", set())
    (tile,) = outer["int32"]  # the accumulators
    assert quantized == {tile}, func.script()


@pytest.mark.parametrize("target, out_channels", [(HOST, 200), (RPI4, 16)], ids=["host-200", "rpi4-16"])
def test_a_layer_with_several_channel_tiles_quantizes_beside_them(fusion_stage, target, out_channels):
    """With 200 output channels (or arm's 4-channel dot-product tiles) each tile of channels would quantize the
    same pixels again: the quantize stays a loop nest of its own, in the same kernel, before the tiles."""
    func, rule = _scheduled(fusion_stage, target, out_channels)
    assert rule == "reduction-tile"
    outer = _outer_loops_of_writes(func)
    quantized = outer.get("uint8", set()) | outer.get("int8", set())
    assert quantized and not quantized & outer["int32"], func.script()


def test_the_quantize_beside_the_tiles_runs_in_their_launch(fusion_stage):
    """Beside the tiles, the quantize is cut between the threads in the tiles' own launch of the thread pool, a
    barrier before the tiles read it (``share_parallel_launches``), not run on one thread before the launch."""
    func, _ = _scheduled(fusion_stage, HOST, 200)
    body = share_launches(func).body.block.body
    statements = body if isinstance(body, tirx.SeqStmt) else [body]
    launches = [stmt for stmt in statements if isinstance(stmt, tirx.AttrStmt)]
    assert [launch.attr_key for launch in launches] == [LAUNCH_POINT], func.script()
    quantize, tiles = launches[0].body
    assert BARRIER in quantize.annotations and quantize.kind == tiles.kind == tirx.ForKind.PARALLEL
    outer = _outer_loops_of_writes(func)
    ((quantized,), (tiled,)) = outer["uint8"], outer["int32"]
    assert quantized.loop_var.same_as(quantize.loop_var) and tiled.loop_var.same_as(tiles.loop_var)


def test_one_vector_wide_channel_tiles_quantize_their_pixels_once_per_task(fusion_stage):
    """104 output channels in 13 tiles of one vector: each task takes a block of pixels, quantizes it and runs
    the 13 channel tiles on it, one after the other: the quantize and the accumulators share the parallel loop,
    and no launch needs a barrier."""
    func, rule = _scheduled(fusion_stage, HOST, 104)
    assert rule == "reduction-tile"
    outer = _outer_loops_of_writes(func)
    ((quantized,), (tiled,)) = outer["uint8"], outer["int32"]
    assert quantized.same_as(tiled) and tiled.kind == tirx.ForKind.PARALLEL, func.script()
    assert share_launches(func).same_as(func)
