"""Default CPU schedules (kernels_schedules/): numerics against numpy, the report, and vector code in the assembly."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from numpy.lib.stride_tricks import sliding_window_view
from tvm import relax
from tvm.script import tirx as T

from edgetvm.kernels_schedules.apply_schedules import NAIVE, ScheduleReport
from edgetvm.kernels_schedules.cpu_rules import CPUFacts, TileChoice, choose_tile, schedule_function, vector_width
from edgetvm.kernels_schedules.pipeline import relax_pipeline
from edgetvm.targets import resolve_target

X86 = resolve_target("x86").tvm_target()
RPI4 = resolve_target("rpi4").tvm_target()
RPI3 = resolve_target("rpi3").tvm_target()
RNG = np.random.default_rng(0)


def np_conv2d(x, w, stride, pad, groups=1):
    """NCHW x OIHW reference."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out_c, in_per_group, kh, kw = w.shape
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]  # N C H W kh kw
    outs = []
    per_group_out = out_c // groups
    for g in range(groups):
        xs = windows[:, g * in_per_group : (g + 1) * in_per_group]
        ws = w[g * per_group_out : (g + 1) * per_group_out]
        outs.append(np.einsum("nchwij,ocij->nohw", xs, ws, optimize=True))
    return np.concatenate(outs, axis=1)


def _module(shape, build):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(build(x)))
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, x, target=X86):
    report = ScheduleReport()
    executable = tvm.compile(mod, target, relax_pipeline=relax_pipeline(target, report))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy(), report


def _const(array):
    return relax.const(np.asarray(array, dtype="float32"))


def _clip(v, lo, hi):
    """ReLU6 and hard-swish's gate, as the importer writes them."""
    return relax.op.minimum(relax.op.maximum(v, _const(lo)), _const(hi))


CONVS = {
    # name: (input NCHW, out channels, kernel, stride, groups)
    "conv3x3": ((1, 16, 20, 20), 32, 3, 1, 1),
    "conv3x3-stride2": ((1, 3, 33, 33), 24, 3, 2, 1),
    "conv1x1": ((1, 24, 14, 14), 40, 1, 1, 1),
    "conv1x1-odd-channels": ((1, 12, 9, 9), 28, 1, 1, 1),
    "conv1x1-42-channels": ((1, 36, 12, 12), 42, 1, 1, 1),
    "conv3x3-stride2-36-channels": ((1, 24, 15, 15), 36, 3, 2, 1),
    "conv5x5": ((1, 8, 16, 16), 16, 5, 1, 1),
    "depthwise3x3": ((1, 32, 18, 18), 32, 3, 1, 32),
    "depthwise3x3-stride2": ((1, 24, 17, 17), 24, 3, 2, 24),
    "depthwise5x5-200-channels": ((1, 200, 2, 12), 200, 5, 1, 200),
    "conv1x1-200-channels": ((1, 32, 2, 12), 200, 1, 1, 1),  # 5-vector tiles
}


@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv2d_with_epilogue_matches_numpy(name):
    shape, out_c, k, stride, groups = CONVS[name]
    w = RNG.standard_normal((out_c, shape[1] // groups, k, k)).astype("float32")
    bias = RNG.standard_normal((1, out_c, 1, 1)).astype("float32")
    x = RNG.standard_normal(shape).astype("float32")

    def build(v):
        y = relax.op.nn.conv2d(v, _const(w), strides=stride, padding=k // 2, groups=groups)
        return relax.op.minimum(
            relax.op.maximum(relax.op.add(y, _const(bias)), _const(np.zeros(()))), _const(np.full((), 6.0))
        )

    actual, report = _run(_module(shape, build), x)
    expected = np.clip(np_conv2d(x, w, stride, k // 2, groups) + bias, 0, 6)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    conv_functions = {n: r for n, r in report.functions.items() if "conv2d" in n}
    assert conv_functions and set(conv_functions.values()) == {"reduction-tile"}, report.functions
    assert not report.naive()


def _scheduled_blocks(mod, target=X86) -> dict[str, set[str]]:
    """Block names of each scheduled PrimFunc of ``mod`` built by edgetvm's Relax pipeline."""
    with target:
        lowered = relax_pipeline(target, ScheduleReport())(mod)
    return {
        gv.name_hint: set(re.findall(r'T\.sblock\("([^"]+)"\)', func.script()))
        for gv, func in lowered.functions.items()
        if isinstance(func, tvm.tirx.PrimFunc)
    }


@pytest.mark.parametrize(
    "shape, out_c, k, stride, groups, copied",
    [
        ((1, 32, 18, 18), 32, 3, 1, 32, False),  # depthwise: reads through the bounds check
        ((1, 3, 48, 192), 8, 3, 2, 1, False),  # PP-OCR's first conv: 18 multiply-adds per input value
        ((1, 3, 128, 128), 24, 5, 2, 1, True),  # BlazeFace's: 150 per input value, the copy pays
        ((1, 16, 20, 20), 32, 3, 1, 1, True),  # 16 channels summed per input value: the copy pays
    ],
)
def test_padding_is_a_copy_only_where_it_pays(shape, out_c, k, stride, groups, copied):
    w = RNG.standard_normal((out_c, shape[1] // groups, k, k)).astype("float32")
    mod = _module(shape, lambda v: relax.op.nn.conv2d(v, _const(w), strides=stride, padding=1, groups=groups))
    (blocks,) = [names for name, names in _scheduled_blocks(mod).items() if "conv2d" in name]
    assert any(name.startswith("pad_temp") for name in blocks) == copied, blocks
    x = RNG.standard_normal(shape).astype("float32")
    actual, _ = _run(mod, x)
    np.testing.assert_allclose(actual, np_conv2d(x, w, stride, 1, groups), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("out_c, padded", [(42, True), (28, True), (32, False), (6, False)])
def test_output_channels_are_padded_to_whole_vectors(out_c, padded):
    w = RNG.standard_normal((out_c, 16, 1, 1)).astype("float32")
    x = RNG.standard_normal((1, 16, 6, 6)).astype("float32")
    actual, report = _run(_module(x.shape, lambda v: relax.op.nn.conv2d(v, _const(w))), x)
    np.testing.assert_allclose(actual, np_conv2d(x, w, 1, 0), rtol=1e-4, atol=1e-4)
    names = [n for n in report.functions if "conv2d" in n]
    assert any("padded_channels" in n for n in names) == padded, names


@pytest.mark.parametrize("m,k,n", [(1, 256, 1000), (8, 64, 30), (1, 200, 2)])
def test_dense_matches_numpy(m, k, n):
    w = RNG.standard_normal((k, n)).astype("float32")
    x = RNG.standard_normal((m, k)).astype("float32")
    actual, report = _run(_module((m, k), lambda v: relax.op.nn.relu(relax.op.matmul(v, _const(w)))), x)
    np.testing.assert_allclose(actual, np.maximum(x @ w, 0), rtol=1e-4, atol=1e-4)
    assert set(report.functions.values()) == {"reduction-tile"}, report.functions


def test_pooling_matches_numpy():
    x = RNG.standard_normal((1, 16, 12, 12)).astype("float32")
    mod = _module(
        x.shape,
        lambda v: relax.op.add(
            relax.op.nn.max_pool2d(v, pool_size=2, strides=2), relax.op.nn.avg_pool2d(v, pool_size=2, strides=2)
        ),
    )
    actual, report = _run(mod, x)
    windows = sliding_window_view(x, (2, 2), axis=(2, 3))[:, :, ::2, ::2]
    np.testing.assert_allclose(actual, windows.max(axis=(4, 5)) + windows.mean(axis=(4, 5)), rtol=1e-5, atol=1e-5)
    assert not report.naive(), report.functions


def test_global_average_pool_and_hardswish_match_numpy():
    x = RNG.standard_normal((1, 40, 7, 7)).astype("float32")

    def build(v):
        mean = relax.op.mean(v, axis=[2, 3], keepdims=True)
        gate = relax.op.minimum(
            relax.op.maximum(relax.op.add(v, _const(np.full((), 3.0))), _const(np.zeros(()))), _const(np.full((), 6.0))
        )
        return relax.op.add(relax.op.divide(relax.op.multiply(v, gate), _const(np.full((), 6.0))), mean)

    actual, report = _run(_module(x.shape, build), x)
    expected = x * np.clip(x + 3, 0, 6) / 6 + x.mean(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert not report.naive(), report.functions


def test_without_schedules_everything_is_naive_and_agrees():
    """The escape hatch (TVM's own pipeline) gives the same numbers: the schedules change speed, not results."""
    shape, out_c, k, stride, groups = CONVS["conv3x3-stride2"]
    w = RNG.standard_normal((out_c, shape[1], k, k)).astype("float32")
    x = RNG.standard_normal(shape).astype("float32")
    mod = _module(shape, lambda v: relax.op.nn.conv2d(v, _const(w), strides=stride, padding=1))
    naive = relax.VirtualMachine(tvm.compile(mod, X86, relax_pipeline=relax_pipeline(X86, schedules=False)), tvm.cpu())
    scheduled, _ = _run(mod, x)
    np.testing.assert_allclose(scheduled, naive["main"](tvm.runtime.tensor(x)).numpy(), rtol=1e-4, atol=1e-4)


def _assembly(target) -> str:
    w = RNG.standard_normal((32, 16, 3, 3)).astype("float32")
    mod = _module((1, 16, 14, 14), lambda v: relax.op.nn.conv2d(v, _const(w), padding=1))
    executable = tvm.compile(mod, target, relax_pipeline=relax_pipeline(target))
    return "\n".join(sub.inspect_source("asm") for sub in executable.mod.imports)


def test_x86_conv_uses_avx_fma():
    asm = _assembly(X86)
    if CPUFacts.of(X86).vector_bits >= 256:
        assert "vfmadd" in asm and "%ymm" in asm
    else:
        assert "mulps" in asm


def test_aarch64_conv_uses_neon_fma():
    asm = _assembly(RPI4)
    assert "fmla\tv" in asm and ".4s" in asm


def test_armv7_conv_uses_neon():
    asm = _assembly(RPI3)
    assert "vmla.f32\tq" in asm or "vfma.f32\tq" in asm


AVX2 = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3"})
AVX512 = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"})


def test_tile_fits_the_register_file():
    """Accumulators, the weight vectors every row multiplies and the broadcast input all hold a register: 7 x 4
    zmm accumulators for 64 channels spilled on AVX-512 (a 3x3 64->64 conv ran 2.5x slower than with 4 rows)."""
    for target in (AVX2, AVX512, X86, RPI4, RPI3):
        facts = CPUFacts.of(target)
        lanes = facts.lanes("float32")
        for rows, cols in [(56, 64), (28, 64), (7, 512), (96, 200), (64, 28), (64, 24), (1, 1000), (12, 2)]:
            tile = choose_tile(rows, cols, lanes, facts)
            vectors = -(-tile.cols // vector_width(tile.cols, lanes))
            assert tile.rows * vectors + vectors + 1 <= facts.registers or tile.rows == 1, (target, rows, cols, tile)
            assert rows % tile.rows == 0 and cols % tile.cols == 0


def test_a_depthwise_tile_keeps_eight_accumulators():
    """A depthwise conv or pool (its input not shared across the tile's columns) with every channel in its tile
    had 24 accumulators for 48 channels on AVX-512: PP-OCR's 5x5 over 1x3x96x48 took 15.8 us on one thread, 6.3
    with 8 rows of one zmm. A tile that sums input channels keeps its larger tile."""
    for target in (AVX2, AVX512, RPI4):
        facts = CPUFacts.of(target)
        lanes = facts.lanes("float32")
        for rows, cols in [(96, 48), (96, 40), (96, 32), (64, 24), (96, 200), (12, 2)]:
            tile = choose_tile(rows, cols, lanes, facts)
            vectors = -(-tile.cols // vector_width(tile.cols, lanes))
            assert tile.rows * vectors <= max(8, vectors), (target, rows, cols, tile)
            assert rows % tile.rows == 0 and cols % tile.cols == 0
    assert choose_tile(96, 48, 16, CPUFacts.of(AVX512)) == TileChoice(8, 16)
    assert choose_tile(96, 48, 16, CPUFacts.of(AVX512), shared_input=True).rows * 3 > 8


def test_avx512_tiles_channels_16_lanes_do_not_divide_in_whole_ymm():
    """88 and 104 channels (PP-OCR) became 44- and 52-wide tiles of xmm on AVX-512; whole ymm run them 2.5x
    faster. Where 16 lanes divide, zmm stay; AVX2 and NEON tiles do not change."""
    zmm = CPUFacts.of(AVX512)
    for channels in (88, 104, 200, 72):
        tile = choose_tile(96, channels, 16, zmm)
        assert vector_width(tile.cols, 16) == 8 and channels % tile.cols == 0, (channels, tile)
    assert vector_width(choose_tile(96, 192, 16, zmm).cols, 16) == 16
    assert choose_tile(96, 200, 16, zmm, shared_input=True).cols == 40  # five ymm, as on AVX2
    assert choose_tile(96, 88, 8, CPUFacts.of(AVX2)).cols == 8
    assert choose_tile(96, 88, 4, CPUFacts.of(RPI4)).cols == 8  # two q registers


def test_report_lists_naive_functions():
    report = ScheduleReport({"a": "reduction-tile", "b": NAIVE, "c": "elementwise", "d": NAIVE})
    assert report.naive() == ["b", "d"]
    assert report.to_json()["rules"] == {"elementwise": 1, "naive": 2, "reduction-tile": 1}


def _int8_conv_module(w, stride=1):
    def build(v):
        return relax.op.nn.conv2d(v, relax.const(w), strides=stride, padding=1, out_dtype="int32")

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, w.shape[1], 10, 10), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(build(x)))
        bb.emit_func_output(out)
    return bb.get()


ALDERLAKE = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "alderlake"})  # AVX-VNNI only


def _host_runs(target) -> bool:
    """Whether this host can run code built for ``target``: its vector width and VNNI flavours."""
    from tvm.target import codegen

    features = ("avx512f", "avx2", "avxvnni", "avx512vnni", "avx512vl")
    return all(
        codegen.llvm_cpu_has_features(feature, X86) or not codegen.llvm_cpu_has_features(feature, target)
        for feature in features
    )


@pytest.mark.parametrize(
    "target, out_channels, in_channels, stride, kernel, instruction",
    [
        (AVX2, 24, 32, 1, "conv2d_int16_pairs", "vpmaddwd"),  # no VNNI: pairs of channels
        (AVX2, 12, 32, 2, "conv2d_int16_pairs", "vpmaddwd"),
        (AVX2, 16, 8, 1, "conv2d_int16_pairs", "vpmaddwd"),  # 4 pairs: the trained CNN's 3x3 8 -> 16 conv
        (AVX512, 32, 32, 1, "conv2d_u8s8_quads", "vpdpbusd"),  # VNNI: quads of channels
        (AVX512, 42, 32, 2, "conv2d_u8s8_quads", "vpdpbusd"),  # 42 channels padded to 48 and cropped
        (AVX512, 16, 8, 1, "conv2d_u8s8_quads", "vpdpbusd"),
        (AVX512, 16, 10, 1, "conv2d_int16_pairs", "vpdpwssd"),  # 10 channels: no quads, pairs (vpmaddwd + add)
        (ALDERLAKE, 24, 16, 1, "conv2d_u8s8_quads", "vpdpbusd"),  # AVX-VNNI: the same instruction, VEX-encoded
    ],
)
def test_int8_conv_on_x86_is_exact_and_uses_its_kernel(target, out_channels, in_channels, stride, kernel, instruction):
    """The x86 int8 conv kernels against numpy, through 3x3 windows with padding: the quad kernel's unsigned
    activations are ``x + 128`` and its padding 128, corrected by ``128 * sum(w)``; negative inputs check both.
    Run where this host can, else compiled only (the instructions are checked either way)."""
    w = RNG.integers(-127, 128, (out_channels, in_channels, 3, 3)).astype("int8")
    x = RNG.integers(-127, 128, (1, in_channels, 10, 10)).astype("int8")
    report = ScheduleReport()
    executable = tvm.compile(_int8_conv_module(w, stride), target, relax_pipeline=relax_pipeline(target, report))
    conv = {name: rule for name, rule in report.functions.items() if "conv2d" in name}
    assert conv and set(conv.values()) == {"reduction-tile"} and all(kernel in name for name in conv), conv
    asm = "\n".join(sub.inspect_source("asm") for sub in executable.mod.imports)
    assert instruction in asm
    if _host_runs(target):
        actual = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_array_equal(actual, np_conv2d(x.astype(np.int64), w.astype(np.int64), stride, 1))


def test_host_int8_conv_takes_the_kernel_of_its_cpu():
    w = RNG.integers(-127, 128, (24, 32, 3, 3)).astype("int8")
    report = ScheduleReport()
    tvm.compile(_int8_conv_module(w), X86, relax_pipeline=relax_pipeline(X86, report))
    expected = "conv2d_u8s8_quads" if CPUFacts.of(X86).vnni else "conv2d_int16_pairs"
    assert CPUFacts.of(X86).vector_bits < 256 or any(expected in name for name in report.functions), report.functions


@pytest.mark.parametrize(
    "target, instruction",
    [("rpi5", "sdot\tv"), ("rpi4", "smull")],
)
def test_int8_conv_uses_arm_widening_multiplies(target, instruction):
    w = RNG.integers(-127, 128, (16, 32, 3, 3)).astype("int8")
    tvm_target = resolve_target(target).tvm_target()
    executable = tvm.compile(_int8_conv_module(w), tvm_target, relax_pipeline=relax_pipeline(tvm_target))
    asm = "\n".join(sub.inspect_source("asm") for sub in executable.mod.imports)
    assert instruction in asm


@pytest.mark.parametrize("shape", [(1, 24, 9, 16), (1, 64, 64, 24), (1, 7, 3)])
def test_full_reduction_max_abs_matches_numpy(shape):
    """Dynamic quantization's max|x| over a whole activation tensor (BlazeFace's 1x64x64x24 is cut in chunks)."""
    x = RNG.standard_normal(shape).astype("float32")
    actual, report = _run(_module(x.shape, lambda v: relax.op.max(relax.op.abs(v))), x)
    assert actual == np.abs(x).max()
    reductions = [rule for name, rule in report.functions.items() if "max" in name]
    assert reductions == ["full-reduction"], report.functions


def _max_abs_loop_kinds(shape, target) -> dict[str, set[int]]:
    """The scheduled max|x|'s vectorized and parallel loop extents, read from its TVMScript."""
    from tvm import te

    x = te.placeholder(shape, "float32", name="x")
    axes = [te.reduce_axis((0, extent)) for extent in shape]
    func = te.create_prim_func([x, te.compute((), lambda: te.max(te.abs(x[tuple(axes)]), axis=axes), name="r")])
    scheduled, rule = schedule_function(func, target)
    assert rule == "full-reduction"
    script = scheduled.mod.script()
    return {kind: {int(n) for n in re.findall(rf"T\.{kind}\((\d+)\)", script)} for kind in ("vectorized", "parallel")}


@pytest.mark.parametrize("mcpu, lanes", [("znver3", 8), ("znver4", 8), ("cortex-a72", 4)])
def test_full_reduction_vectorizes_channels_that_fill_no_whole_register(mcpu, lanes):
    """24 channels: AVX-512's 16 lanes do not divide them, and the reduction ran scalar (54 us for BlazeFace's
    1x64x64x24 where 8-lane vectors take 7); a tensor that large is also reduced in parallel chunks."""
    triple = "aarch64-linux-gnu" if mcpu.startswith("cortex") else "x86_64-linux-gnu"
    target = tvm.target.Target({"kind": "llvm", "mtriple": triple, "mcpu": mcpu})
    kinds = _max_abs_loop_kinds((1, 64, 64, 24), target)
    assert kinds["vectorized"] == {lanes} and kinds["parallel"], kinds
    assert not _max_abs_loop_kinds((1, 8, 8, 96), target)["parallel"]  # 6144 elements: not worth the thread pool


def _int8_dense(x: np.ndarray, w: np.ndarray, target) -> tuple[tvm.runtime.Executable, ScheduleReport]:
    bb = relax.BlockBuilder()
    var = relax.Var("x", relax.TensorType(x.shape, "int8"))
    with bb.function("main", [var]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.matmul(var, relax.const(w), out_dtype="int32")))
        bb.emit_func_output(out)
    report = ScheduleReport()
    return tvm.compile(bb.get(), target, relax_pipeline=relax_pipeline(target, report)), report


@pytest.mark.parametrize(
    "target, m, k, n, kernel, instruction",
    [
        (AVX2, 1, 256, 40, "dense_int16_pairs", "vpmaddwd"),  # 5 ymm registers of columns
        (AVX2, 3, 784, 64, "dense_int16_pairs", "vpmaddwd"),  # rows too; the trained CNN's layer
        (AVX2, 1, 64, 10, "dense_int16_pairs", "vpmaddwd"),  # 10 columns padded to 16 with zero weights, cropped
        (AVX512, 1, 784, 64, "dense_u8s8_quads", "vpdpbusd"),  # VNNI: quads of K
        (AVX512, 3, 64, 10, "dense_u8s8_quads", "vpdpbusd"),
        (AVX512, 2, 66, 24, "dense_int16_pairs", "vpdpwssd"),  # K not a multiple of 4: pairs
        (AVX512, 2, 33, 24, "dense_dot", None),  # odd K: no pairs, the dot form
    ],
)
def test_int8_dense_on_x86_is_exact_and_uses_its_kernel(target, m, k, n, kernel, instruction):
    w = RNG.integers(-127, 128, (k, n)).astype("int8")
    x = RNG.integers(-127, 128, (m, k)).astype("int8")
    executable, report = _int8_dense(x, w, target)
    dense = {name: rule for name, rule in report.functions.items() if "dense" in name}
    assert dense and set(dense.values()) == {"reduction-tile"} and all(kernel in name for name in dense), dense
    if instruction is not None:
        assert instruction in "\n".join(sub.inspect_source("asm") for sub in executable.mod.imports)
    if _host_runs(target):
        actual = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_array_equal(actual, x.astype(np.int64) @ w.astype(np.int64))


def test_int8_dense_on_rpi5_is_a_dot_product():
    w = RNG.integers(-127, 128, (256, 40)).astype("int8")
    target = resolve_target("rpi5").tvm_target()
    executable, report = _int8_dense(np.zeros((1, 256), "int8"), w, target)
    assert [rule for name, rule in report.functions.items() if "dense_dot" in name] == ["reduction-tile"]
    assert "sdot\tv" in "\n".join(sub.inspect_source("asm") for sub in executable.mod.imports)


def test_pair_intrinsic_allocates_nothing():
    """A named intermediate in a tensor intrinsic becomes a local buffer, allocated through TVMBackendAllocWorkspace
    in every tile: the pair kernel ran 4x slower with three of them."""
    from tvm.s_tir import TensorIntrin

    from edgetvm.kernels_schedules.x86_int16_pairs import PMADDWD_8x2

    impl = TensorIntrin.get(PMADDWD_8x2).impl.script()
    assert "alloc" not in impl and "llvm.x86.avx2.pmadd.wd" in impl, impl


@pytest.mark.parametrize(
    "shape, parallel",
    [((1, 64, 64, 24), True), ((1, 32, 32, 36), True), ((1, 3, 96, 88), True), ((1, 3, 96, 32), False)],
)
def test_elementwise_kernels_run_in_parallel_from_16k_elements(shape, parallel):
    """A quantize over BlazeFace's 1x64x64x24 ran serially below the conv threshold (131072); so did the PP-OCR
    classifier's squeeze-excite product over 1x3x96x88 below 32768, reading and writing through both cores'
    caches between two parallel kernels."""
    from tvm import te, topi

    x = te.placeholder(shape, "float32", name="x")
    func = te.create_prim_func([x, topi.cast(topi.round(topi.multiply(x, 12.5)), "int8")])
    scheduled, rule = schedule_function(func, AVX2)
    assert rule == "elementwise"
    assert ("T.parallel(" in scheduled.mod.script()) == parallel


def _second_core_starts_at(func, buffer: str) -> list[int]:
    """The first element of ``buffer`` the second of two cores touches in a scheduled ``func``: the indices of its
    first access under the parallel loop, with that loop at the start of its second half and every other at 0."""
    from tvm import s_tir, tirx
    from tvm.sym.analyzer import Analyzer

    def accesses(stmt, loops):
        if isinstance(stmt, tirx.For):
            yield from accesses(stmt.body, [*loops, stmt])
        elif isinstance(stmt, tirx.SeqStmt):
            for inner in stmt.seq:
                yield from accesses(inner, loops)
        elif isinstance(stmt, s_tir.SBlockRealize):
            for region in [*stmt.block.reads, *stmt.block.writes]:
                if region.source.name == buffer and any(loop.kind == tirx.ForKind.PARALLEL for loop in loops):
                    yield loops, stmt, region
            yield from accesses(stmt.block.body, loops)
        elif hasattr(stmt, "body"):
            yield from accesses(stmt.body, loops)

    loops, realize, region = next(accesses(func.body, []))
    analyzer = Analyzer()
    for loop in loops:
        start = int(loop.extent) // 2 if loop.kind == tirx.ForKind.PARALLEL else 0
        analyzer.bind(loop.loop_var, tirx.const(start, "int64"))
    for iter_var, value in zip(realize.block.iter_vars, realize.iter_values, strict=True):
        analyzer.bind(iter_var.var, analyzer.simplify(value))
    return [int(analyzer.simplify(r.min)) for r in region.region]


@pytest.mark.parametrize("shape, second", [((1, 2, 256, 200), [0, 0, 128, 0]), ((1, 64, 64, 24), [0, 32, 0, 0])])
def test_cores_share_a_wide_map_by_columns_and_a_square_one_by_rows(shape, second):
    """Every kernel of a map must cut it between the cores the same way, along its longer axis. The PP-OCR
    classifier's 2-row maps were cut by rows: a 5x5 depthwise conv read both rows on each core, and the next
    kernel wrote into storage the other core still held (its float build: 0.325 -> 0.289 ms by columns)."""
    from tvm import te, topi

    x = te.placeholder(shape, "float32", name="x")
    w = te.placeholder((5, 5, shape[3], 1), "float32", name="w")
    depthwise = topi.nn.depthwise_conv2d_nhwc(x, w, 1, 2, 1)
    quantize = topi.cast(topi.round(topi.multiply(x, 12.5)), "int8")
    axes = [te.reduce_axis((0, extent)) for extent in shape]
    max_abs = te.compute((), lambda: te.max(te.abs(x[tuple(axes)]), axis=axes), name="r")
    for outputs, rule, buffer in [
        ([w, depthwise], "reduction-tile", "DepthwiseConv2d"),
        ([quantize], "elementwise", "x"),
        ([max_abs], "full-reduction", "x"),
        ([topi.sum(x, axis=[1, 2], keepdims=True)], "channel-reduction", "x"),
    ]:
        scheduled, actual_rule = schedule_function(te.create_prim_func([x, *outputs]), AVX512)
        assert actual_rule == rule
        assert _second_core_starts_at(scheduled.mod["main"], buffer) == second, rule


@T.prim_func(s_tir=True)
def _pool_pad_add_relu(
    P: T.Buffer((1, 16, 16, 28), "float32"),
    Y: T.Buffer((1, 16, 16, 32), "float32"),
    Out: T.Buffer((1, 16, 16, 32), "float32"),
):
    """BlazeFace's residual: a max-pool's 28 channels padded to 32 with zeros, added to the branch, ReLU."""
    for n, h, w, c in T.grid(1, 16, 16, 32):
        with T.sblock("compute"):
            vn, vh, vw, vc = T.axis.remap("SSSS", [n, h, w, c])
            Out[vn, vh, vw, vc] = T.max(
                T.if_then_else(vc < 28, P[vn, vh, vw, vc], T.float32(0.0)) + Y[vn, vh, vw, vc], T.float32(0.0)
            )


def _vectorized(func) -> str:
    """``func`` lowered through loop partitioning and ``VectorizeLoop``, as TVM's default TIR pipeline does."""
    from tvm import s_tir, tirx

    passes = [
        s_tir.transform.LowerInitBlock(),
        s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.CompactBufferAllocation(),
        s_tir.transform.LowerOpaqueBlock(),
        tirx.transform.FlattenBuffer(),
        s_tir.transform.LoopPartition(),
        tirx.transform.VectorizeLoop(),
        tirx.transform.StmtSimplify(),
    ]
    return tvm.transform.Sequential(passes)(tvm.IRModule({"main": func})).script()


@pytest.mark.parametrize("target", [AVX2, AVX512, RPI4])
def test_channel_padding_in_an_elementwise_kernel_stays_vector(target):
    """A condition that differs between a vector's lanes (``c < 28`` across a 16- or 8-lane vector) made TVM
    scalarise the whole loop: BlazeFace's max-pool + channel pad + residual add took 38 us for 32768 values."""
    sch, rule = schedule_function(_pool_pad_add_relu, target)
    assert rule == "elementwise"
    lowered = _vectorized(sch.mod["main"])
    assert "T.Ramp" in lowered and "if_then_else" not in lowered, lowered
    p = RNG.standard_normal((1, 16, 16, 28)).astype("float32")
    y = RNG.standard_normal((1, 16, 16, 32)).astype("float32")
    if target.attrs.get("mtriple", "").startswith("x86_64"):
        built = tvm.compile(sch.mod, target=target)
        out = tvm.runtime.empty((1, 16, 16, 32), "float32")
        built["main"](tvm.runtime.tensor(p), tvm.runtime.tensor(y), out)
        expected = np.maximum(np.pad(p, ((0, 0), (0, 0), (0, 0), (0, 4))) + y, 0)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)


def test_residuals_with_padded_channels_match_numpy():
    """BlazeFace's residuals: a max-pool padded from 28 to 32 channels and added to a conv's 32, after a conv
    computing 28 channels on weights padded to 32 and cropped. A pad computed in the pool's tile loop (tried:
    ``reverse_compute_at`` accepts it) covers only the pool's 28 channels and leaves the padded ones unwritten."""
    w28 = RNG.standard_normal((28, 28, 1, 1)).astype("float32")
    w32 = RNG.standard_normal((32, 28, 1, 1)).astype("float32")
    x = RNG.standard_normal((1, 28, 16, 16)).astype("float32")

    def build(v):
        pooled = relax.op.nn.max_pool2d(v, pool_size=2, strides=2)
        padded = relax.op.nn.pad(pooled, [0, 0, 0, 4, 0, 0, 0, 0])
        branch = relax.op.nn.conv2d(relax.op.nn.relu(relax.op.nn.conv2d(v, _const(w28))), _const(w32), strides=2)
        return relax.op.nn.relu(relax.op.add(branch, padded))

    actual, _ = _run(_module(x.shape, build), x)
    pooled = x.reshape(1, 28, 8, 2, 8, 2).max(axis=(3, 5))
    branch = np_conv2d(np.maximum(np_conv2d(x, w28, 1, 0), 0), w32, 2, 0)
    expected = np.maximum(branch + np.pad(pooled, ((0, 0), (0, 4), (0, 0), (0, 0))), 0)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def _has_parallel_loop(func) -> bool:
    scheduled, rule = schedule_function(func, AVX2)
    assert rule == "reduction-tile"
    return "T.parallel(" in scheduled.mod.script()


@pytest.mark.parametrize("height, channels, parallel", [(12, 24, True), (6, 8, False)])
def test_small_convs_over_large_maps_run_in_parallel(height, channels, parallel):
    """PP-OCR's 3x3 stride-(2, 1) depthwise conv over 1x12x96x24 (124416 multiply-adds, below the conv threshold)
    ran serially between two parallel kernels: it read the half of its input the other core had written, 10 us
    on two threads against 5 on one. A map of 16384 elements or more keeps the cores' split; a small one does not
    wake the pool."""
    from tvm import te, topi

    x = te.placeholder((1, height, 96, channels), "float32", name="x")
    w = te.placeholder((3, 3, 1, channels), "float32", name="w")
    y = topi.nn.group_conv2d_nhwc(x, w, (2, 1), (1, 1), (1, 1), channels)
    assert _has_parallel_loop(te.create_prim_func([x, w, y])) == parallel


@pytest.mark.parametrize("size, parallel, rows", [(14, False, 7), (28, True, 4)])
def test_an_int8_quad_conv_over_a_small_map_runs_serially(size, parallel, rows):
    """The trained CNN's 3x3 8 -> 16 quad conv over 14x14 (225 thousand multiply-adds, 3136 outputs) counts its
    work in vpdpbusd lanes, four multiply-adds each, and does not wake the pool: 1.3 us on one thread, 2.3 and
    more on two. The same conv over 28x28 does. Over 14x14 its tile is 7 rows x 2 vectors: 14 chains of vpdpbusd,
    where the most reuse within 12 accumulators (2 rows) left 4; over 28x28, 4 rows in 12 are enough."""
    from tvm import te

    from edgetvm.kernels_schedules.x86_u8s8_quads import quad_conv2d

    x = te.placeholder((1, size, size, 8), "uint8", name="x")
    w = te.placeholder((3, 3, 2, 16, 4), "int8", name="w")
    func = te.create_prim_func([x, w, quad_conv2d(x, w, (1, 1), (1, 1, 1, 1))])
    scheduled, rule = schedule_function(func, AVX512)
    assert rule == "reduction-tile"
    script = scheduled.mod.script()
    assert ("T.parallel(" in script) == parallel
    assert f"T.unroll({rows})" in script


def test_a_single_row_matmul_with_large_weights_runs_serially():
    """The weights are not a map the cores share: a 1x784 by 784x64 matmul (the CNN's dense layer) stays serial,
    where a parallel matrix-vector product was slower (10.4 -> 11.3 us for the whole CNN)."""
    from tvm import te, topi

    x = te.placeholder((1, 784), "float32", name="x")
    w = te.placeholder((784, 64), "float32", name="w")
    assert not _has_parallel_loop(te.create_prim_func([x, w, topi.matmul(x, w)]))


def test_an_elementwise_producer_of_a_per_channel_reduction_is_read_inside_it():
    """``max(|h|)`` over a map's rows and columns (a gated input's scale, ``dynamic_gated_input``): |h| was a
    parallel kernel of its own writing a map-sized buffer before the reduction read it (8.7 us for PP-OCR's
    1x2x96x200 against 2.8 for the mean beside it)."""
    from tvm import te, topi

    h = te.placeholder((1, 2, 96, 200), "float32", name="h")
    reduced = topi.max(topi.abs(h), axis=(1, 2), keepdims=True)
    scheduled, rule = schedule_function(te.create_prim_func([h, reduced]), AVX2)
    assert rule == "channel-reduction"
    script = scheduled.mod.script()
    assert 'T.sblock("compute")' not in script and "T.fabs" in script, script  # |h| inside the reduction
    assert script.count("T.parallel(") == 1
    values = RNG.standard_normal((1, 2, 96, 200)).astype("float32")
    actual, _ = _run(_module(values.shape, lambda v: relax.op.max(relax.op.abs(v), axis=[1, 2], keepdims=True)), values)
    np.testing.assert_array_equal(actual, np.abs(values).max(axis=(1, 2), keepdims=True))


def test_three_channel_maps_are_vectorised_across_columns():
    """An RGB input's innermost axis (3 channels) fits no vector: the quantize and the max|x| that int8 builds
    run over it were scalar loops (BlazeFace's 1x128x128x3: 7 and 27 us). Their column and channel loops fuse
    into one contiguous loop, which vectorises; a pad (shifted indices) keeps its loops."""
    from tvm import te, topi

    x = te.placeholder((1, 128, 128, 3), "float32", name="x")
    quantize = te.create_prim_func([x, topi.cast(topi.round(topi.multiply(x, 12.5)), "int8")])
    scheduled, rule = schedule_function(quantize, X86)
    assert rule == "elementwise"
    assert min(int(n) for n in re.findall(r"T\.vectorized\((\d+)\)", scheduled.mod.script())) >= 16
    assert {16} <= _max_abs_loop_kinds((1, 128, 128, 3), X86)["vectorized"]
    padded = te.create_prim_func([x, topi.nn.pad(x, [0, 0, 1, 0], [0, 0, 2, 0])])
    assert "T.vectorized(" not in schedule_function(padded, X86)[0].mod.script()
    values = RNG.standard_normal((1, 64, 64, 3)).astype("float32")
    actual, _ = _run(_module(values.shape, lambda v: relax.op.max(relax.op.abs(v))), values)
    assert actual == np.abs(values).max()


@pytest.mark.parametrize(
    "shape, vectors, rule",
    [
        ((1, 2, 96, 200), 25, "channel-reduction"),
        ((1, 3, 96, 88), 11, "channel-reduction"),
        ((1, 3, 96, 48), 3, "reduction-tile"),
    ],
)
def test_a_per_channel_mean_over_a_whole_map_keeps_its_channels_in_flight(shape, vectors, rule):
    """A squeeze-excite's mean reduces every pixel into one row of channels: one 8-lane vector per task was a
    chain of 192 dependent adds (PP-OCR's 1x2x96x200: 3.5 us). The tile takes every channel that fits the
    registers, each vector an independent chain. From 16384 elements on the cores share the map, each reducing
    the chunk its producer wrote (PP-OCR's three: its float build 279 -> 272 us); below, one task does it all."""
    from tvm import te, topi

    x = te.placeholder(shape, "float32", name="x")
    scheduled, actual_rule = schedule_function(te.create_prim_func([x, topi.sum(x, axis=[1, 2], keepdims=True)]), X86)
    script = scheduled.mod.script()
    assert actual_rule == rule
    (lanes,) = {int(n) for n in re.findall(r"T\.vectorized\((\d+)\)", script)}
    assert lanes * vectors == shape[-1] and vectors in {int(n) for n in re.findall(r"T\.unroll\((\d+)\)", script)}
    assert ("T.parallel(" in script) == (rule == "channel-reduction")
    values = RNG.standard_normal(shape).astype("float32")
    actual, _ = _run(_module(shape, lambda v: relax.op.mean(v, axis=[1, 2], keepdims=True)), values)
    np.testing.assert_allclose(actual, values.mean(axis=(1, 2), keepdims=True), rtol=1e-5, atol=1e-6)


def test_a_gate_broadcast_over_a_map_is_computed_once_per_channel():
    """A squeeze-excite conv's gate (``clip(conv * a + b, 0, 1)`` over 1x1x1xC) multiplies the whole 1xHxWxC block
    input: inlined into that product, the gate's multiply-add and clip ran for every map element (PP-OCR's
    w8a8-static 1x2x96x200 gate kernel: 7.6 -> 4.4 us on one thread once computed per channel in the conv's tile)."""
    from tvm import te, topi

    s = te.placeholder((1, 1, 1, 50), "float32", name="s")
    w = te.placeholder((1, 1, 50, 200), "float32", name="w")
    b = te.placeholder((1, 1, 1, 200), "float32", name="b")
    h = te.placeholder((1, 2, 96, 200), "float32", name="h")
    conv = topi.nn.conv2d_nhwc(s, w, 1, 0, 1)
    gate = topi.clip(topi.add(topi.multiply(conv, 0.2), b), 0.0, 1.0)
    func = te.create_prim_func([s, w, b, h, topi.multiply(h, gate)])
    scheduled, rule = schedule_function(func, X86)
    assert rule == "reduction-tile"
    map_block = re.search(r"T\.parallel\(.*", scheduled.mod.script(), re.S).group(0)
    assert "T.max(" not in map_block and "T.min(" not in map_block, map_block  # the clip is not per element

    args = [RNG.standard_normal([int(d) for d in t.shape]).astype("float32") for t in (s, w, b, h)]
    out = tvm.runtime.tensor(np.zeros((1, 2, 96, 200), "float32"))
    tvm.compile(scheduled.mod, X86)(*[tvm.runtime.tensor(a) for a in args], out)
    expected = args[3] * np.clip((args[0].reshape(1, 50) @ args[1].reshape(50, 200)) * 0.2 + args[2], 0.0, 1.0)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def _layer_and_max_abs(shape, channels_last_tile: bool = True):
    """A depthwise 3x3 + bias writing y, and max(maximum(|y|, eps)) of it: what ``join_quantize_outputs`` makes
    of a float layer whose output the next layer quantizes at run time."""
    from tvm import te, topi

    x = te.placeholder(shape, "float32", name="x")
    w = te.placeholder((3, 3, shape[-1], 1), "float32", name="w")
    b = te.placeholder((shape[-1],), "float32", name="b")
    y = topi.add(topi.nn.depthwise_conv2d_nhwc(x, w, 1, 1, 1), b)
    m = topi.max(topi.maximum(topi.abs(y), T.float32(1e-12)))
    return te.create_prim_func([x, w, b, y, m]), [shape, (3, 3, shape[-1], 1), (shape[-1],)]


@pytest.mark.parametrize("shape, in_tile", [((1, 64, 64, 24), True), ((1, 16, 16, 88), True), ((1, 9, 9, 3), False)])
def test_a_layer_output_s_max_abs_is_reduced_in_its_tile(shape, in_tile):
    """The next layer's dynamic scale was a full-reduction kernel reading y back (BlazeFace's 1x64x64x24: 4.5 us,
    18 of them): reduced in the tile as the epilogue writes it, one vector of partial maxima per tile. A tile
    without whole vectors of columns reduces y after the tile instead (a chain of scalar maxima per tile)."""
    func, shapes = _layer_and_max_abs(shape)
    scheduled, rule = schedule_function(func, X86)
    assert rule == "reduction-tile"
    script = scheduled.mod.script()
    nests = re.split(r"\n        for ", script)[1:]  # the function's outermost loops: the tile's first
    assert ("T.fabs" in nests[0]) == in_tile, script
    args = [RNG.standard_normal(s).astype("float32") for s in shapes]
    y, m = tvm.runtime.tensor(np.zeros(shape, "float32")), tvm.runtime.tensor(np.zeros((), "float32"))
    tvm.compile(scheduled.mod, X86)(*[tvm.runtime.tensor(a) for a in args], y, m)
    assert float(m.numpy()) == np.abs(y.numpy()).max() > 0
