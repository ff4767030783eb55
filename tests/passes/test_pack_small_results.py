"""PackSmallResults: ``main``'s small kernel results (run-time scales, squeeze-excite vectors) as slots of one tensor,
written in place."""

import numpy as np
import pytest
import tvm
from tvm import relax, tirx
from tvm.script import relax as R
from tvm.script import tirx as T

from edgetvm.kernels_schedules import pipeline as kernels_pipeline
from edgetvm.kernels_schedules.kernel_passes import kernel_passes
from edgetvm.kernels_schedules.pack_small_results import MAX_VALUES, PACKED_NAME, pack_small_results
from edgetvm.kernels_schedules.substitute_buffers import BufferSubstitution
from edgetvm.kernels_schedules.tir_nodes import UnsupportedNode
from edgetvm.pipeline.passes import DynamicQuantize

HOST = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
_MAP = relax.TensorType((2048,), "float32")  # more than MAX_VALUES: only the scales are small
_SCALE = relax.TensorType((), "float32")


@T.prim_func(private=True, s_tir=True)
def _stats(x: T.Buffer((2048,), "float32"), y: T.Buffer((2048,), "float32"), s: T.Buffer((), "float32")):
    for i in range(2048):
        with T.sblock("y"):
            vi = T.axis.spatial(2048, i)
            y[vi] = x[vi] + T.float32(1)
    for i in range(2048):
        with T.sblock("s"):
            vi = T.axis.reduce(2048, i)
            with T.init():
                s[()] = T.float32(0)
            s[()] = T.max(s[()], T.fabs(x[vi]))


@T.prim_func(private=True, s_tir=True)
def _divide(y: T.Buffer((2048,), "float32"), s: T.Buffer((), "float32"), z: T.Buffer((2048,), "float32")):
    for i in range(2048):
        with T.sblock("z"):
            vi = T.axis.spatial(2048, i)
            z[vi] = y[vi] / s[()]


def _two_scales(together: bool) -> tvm.IRModule:
    """stats (y = x + 1 and s = max|x|) then divide (z = y / s), twice over: in turn (each scale used before the
    next is made), or ``together`` (both scales made before either is used: one slot cannot hold them)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2048,), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            stats, divide = bb.add_func(_stats, "stats"), bb.add_func(_divide, "divide")

            def call_stats(v):
                result = bb.emit(relax.call_tir(stats, relax.Tuple([v]), [_MAP, _SCALE]))
                return bb.emit(relax.TupleGetItem(result, 0)), bb.emit(relax.TupleGetItem(result, 1))

            def call_divide(y, s):
                return bb.emit(relax.call_tir(divide, relax.Tuple([y, s]), _MAP))

            y, s = call_stats(x)
            if together:
                y2, s2 = call_stats(y)
                out = call_divide(call_divide(y2, s), s2)
            else:
                y2, s2 = call_stats(call_divide(y, s))
                out = call_divide(y2, s2)
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()


def _calls(mod: tvm.IRModule, op: str) -> list[relax.Call]:
    return [
        b.value
        for block in mod["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == op
    ]


def _run(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, target=HOST), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _results(mod: tvm.IRModule) -> list[relax.TensorType]:
    """The types of the tensors ``main``'s kernel calls return."""
    types = []
    for call in _calls(mod, "relax.call_tir") + _calls(mod, "relax.call_tir_inplace"):
        out = call.ty_args[0]
        types += list(out.fields) if isinstance(out, relax.TupleType) else [out]
    return types


def _scale_results(mod: tvm.IRModule) -> int:
    """How many ``()`` tensors ``main``'s kernel calls return."""
    return sum(ty.ndim == 0 for ty in _results(mod))


def _compiled_with_and_without(mod: tvm.IRModule, x: np.ndarray, monkeypatch) -> tuple[np.ndarray, np.ndarray]:
    """``mod`` compiled by edgetvm's pipeline and run on ``x``, with the pass and without it."""
    outputs = []
    for packing in (True, False):
        if not packing:
            monkeypatch.setattr(kernels_pipeline, "PackSmallResults", lambda: tvm.transform.Sequential([]))
        lib = tvm.compile(mod, target=HOST, relax_pipeline=kernels_pipeline.relax_pipeline(HOST))
        outputs.append(relax.VirtualMachine(lib, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy())
    return outputs[0], outputs[1]


def test_scales_used_in_turn_share_one_slot_written_in_place():
    in_turn = _two_scales(together=False)
    packed = pack_small_results(in_turn)
    allocs = _calls(packed, "relax.builtin.alloc_tensor")
    assert len(allocs) == 1 and [int(d) for d in allocs[0].args[0].values] == [1]
    assert len(_calls(packed, "relax.call_tir_inplace")) == 2  # both stats calls write the slot
    assert _scale_results(packed) == 0
    stats = packed[packed.get_global_var("stats")]
    assert [p.name for p in stats.params] == ["x", PACKED_NAME, "y"]  # in place: among the inputs
    x = np.random.default_rng(1).standard_normal(2048).astype("float32")
    np.testing.assert_array_equal(_run(packed, x), _run(in_turn, x))


def test_scales_alive_together_keep_their_tensors():
    together = _two_scales(together=True)
    assert pack_small_results(together).same_as(together)


def _dynamic_chain(widths: list[int]) -> tvm.IRModule:
    """A float depthwise conv over 16 channels, then 1x1 convs to each of ``widths`` with relu, quantized at run
    time: each takes the run-time scale of its input, made by the kernel before it."""
    rng = np.random.default_rng(5)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 12, 12), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            weight = relax.const(rng.standard_normal((16, 1, 3, 3)).astype("float32"))
            y = bb.emit(R.nn.conv2d(x, weight, padding=[1] * 4, groups=16))
            channels = 16
            for width in widths:
                layer = relax.const(rng.standard_normal((width, channels, 1, 1)).astype("float32") * 0.3)
                y = bb.emit(R.nn.relu(R.nn.conv2d(y, layer)))
                channels = width
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return DynamicQuantize(keep_float=frozenset({"conv2d_0"}))(bb.get())


def _scheduled(fusion_stage, mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` as the pipeline has it where the pass runs: fused, scheduled, joined launches."""
    passes = [
        *kernels_pipeline.fusion_passes(HOST),
        kernels_pipeline.ApplyCPUSchedules(HOST, None),
        *kernel_passes(),
    ]
    return fusion_stage.run(mod, HOST, passes)


def test_a_dynamic_chain_keeps_no_scale_tensor_and_its_numbers(fusion_stage, monkeypatch):
    # 16 -> 24 -> 16 -> 24 -> 16: the two 16 -> 24 layers share a kernel, so do the two 24 -> 16 before a layer.
    mod = _dynamic_chain([24, 16, 24, 16])
    scheduled = _scheduled(fusion_stage, mod)
    assert _scale_results(scheduled) == 4
    packed = pack_small_results(scheduled)
    assert _scale_results(packed) == 0
    allocs = _calls(packed, "relax.builtin.alloc_tensor")
    assert len(allocs) == 1 and [int(d) for d in allocs[0].args[0].values] == [2]  # a slot for every other scale

    x = np.random.default_rng(0).standard_normal((1, 16, 12, 12)).astype("float32")
    packed, apart = _compiled_with_and_without(mod, x, monkeypatch)
    np.testing.assert_array_equal(packed, apart)  # where the scalars live moves, not a bit of the result


def test_a_kernel_reading_and_writing_one_slot_keeps_its_tensors(fusion_stage):
    """Equal layers share one kernel that reads its input's scale and writes its output's, which would be one
    slot: the kernel could write it before it has read it, so the scales stay tensors."""
    scheduled = _scheduled(fusion_stage, _dynamic_chain([16, 16, 16]))
    assert pack_small_results(scheduled).same_as(scheduled)


def test_a_node_the_substitution_does_not_rebuild_is_refused():
    loop = tirx.While(tirx.const(False, "bool"), tirx.Evaluate(tirx.const(0, "int32")))
    with pytest.raises(UnsupportedNode):
        BufferSubstitution({}).stmt(loop)


def _squeeze_excite() -> tvm.IRModule:
    """x * sigmoid(conv(relu(conv(mean(x))))) in float: the channel means (16) and the squeezed vector (4) are
    small results, the map and the gated map are not."""
    rng = np.random.default_rng(3)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 12, 12), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            means = bb.emit(R.mean(x, axis=[2, 3], keepdims=True))
            squeeze = relax.const(rng.standard_normal((4, 16, 1, 1)).astype("float32"))
            excite = relax.const(rng.standard_normal((16, 4, 1, 1)).astype("float32"))
            gates = bb.emit(R.sigmoid(R.nn.conv2d(R.nn.relu(R.nn.conv2d(means, squeeze)), excite)))
            out = bb.emit_output(R.multiply(x, gates))
        bb.emit_func_output(out)
    return bb.get()


def test_squeeze_excite_vectors_take_slots_of_the_packed_tensor(fusion_stage, monkeypatch):
    mod = _squeeze_excite()
    scheduled = _scheduled(fusion_stage, mod)
    small = [ty for ty in _results(scheduled) if 0 < int(np.prod([int(d) for d in ty.shape.values])) <= MAX_VALUES]
    assert len(small) >= 2
    packed = pack_small_results(scheduled)
    sizes = [int(np.prod([int(d) for d in ty.shape.values])) for ty in _results(packed)]
    allocs = _calls(packed, "relax.builtin.alloc_tensor")
    assert len(allocs) == 1
    assert all(size > MAX_VALUES or size == int(allocs[0].args[0].values[0]) for size in sizes)  # maps or the pack

    x = np.random.default_rng(0).standard_normal((1, 16, 12, 12)).astype("float32")
    with_pack, without = _compiled_with_and_without(mod, x, monkeypatch)
    np.testing.assert_array_equal(with_pack, without)
