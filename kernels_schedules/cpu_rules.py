"""Default CPU schedules: deterministic TIR schedules for fused Relax PrimFuncs, no measurement needed.

``schedule_function`` takes one fused PrimFunc (what ``FuseOps``/``FuseTIR`` made of a conv2d and its epilogue, a
matmul, a pooling window, an elementwise chain...) and returns it scheduled with the name of the rule that did
it (``reduction-tile``, ``full-reduction``, ``channel-reduction``, ``elementwise``, ``generic``), or raises when a
primitive refuses; ``apply_schedules.ApplyCPUSchedules`` then keeps TVM's naive loops and reports the function as
``naive``.

The layouts come from ``pipeline.layout_passes``: conv2d in NHWC with HWIO weights, so the output channel is the
innermost, contiguous axis of both the weights and the result. The kernel is then the same for conv2d (1x1,
3x3, strided), depthwise conv2d, matmul/dense and pooling windows: a register tile of ``rows x (lanes *
vectors)`` accumulators, where ``rows`` walks the output's second-innermost axis (output width, or matrix rows)
and the vectors walk output channels; the reduction loops (kernel window, input channels) run outside the tile
so every weight vector loaded is used ``rows`` times and every input value ``vectors`` times. Outer loops are
fused and run in parallel over the target's cores when there is enough work. Epilogues (bias, batch norm,
relu/relu6/hard-swish, residual add) are inlined into one block computed per tile, while the tile is hot. int8
kernels in dot form (``int8_conv_layout``) and the x86 pair kernel (``x86_int16_pairs``) are variants of the
same tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import ir, s_tir, tirx
from tvm.target import Target

from edgetvm.kernels_schedules.channel_groups import LANES as PAIR_LANES
from edgetvm.kernels_schedules.x86_int16_pairs import PAIR_KERNEL, PMADDWD_8x2
from edgetvm.kernels_schedules.x86_u8s8_quads import QUAD_KERNEL, VPDPBUSD_8x4
from edgetvm.targets.presets import llvm_has_vnni

# Kernels tiled as the pair kernel, and the tensor intrinsic of their innermost 8 lanes x (2 or 4) channels.
PAIR_INTRINSICS = {PAIR_KERNEL: PMADDWD_8x2, QUAD_KERNEL: VPDPBUSD_8x4}
# Multiply-adds one lane of their instruction does: their work in the float kernel's terms, over a small map
# (see PARALLEL_MIN_WORK).
MULTIPLY_ADDS_PER_LANE = {PAIR_KERNEL: 2, QUAD_KERNEL: 4}


@dataclass(frozen=True)
class CPUFacts:
    """What the schedules need to know of the target."""

    vector_bits: int
    registers: int  # SIMD registers: 16 on x86 AVX2, 32 on AVX-512 and aarch64 NEON
    is_x86: bool = False
    vnni: bool = False  # x86 ``vpdpbusd`` on ymm: AVX512-VNNI with AVX512-VL, or AVX-VNNI

    @classmethod
    def of(cls, target: Target) -> CPUFacts:
        from tvm.target import codegen

        # LLVM's own "vector width" says 512 for AVX2-only CPUs such as znver3: ask for the ISA instead.
        triple = str(target.attrs.get("mtriple", "")) or codegen.llvm_get_system_triple()
        if triple.startswith(("x86_64", "i686")):
            vnni = llvm_has_vnni(target)
            if codegen.llvm_cpu_has_features("avx512f", target):
                return cls(512, 32, True, vnni)
            if codegen.llvm_cpu_has_features("avx2", target) or codegen.llvm_cpu_has_features("avx", target):
                return cls(256, 16, True, vnni)
            return cls(128, 16, True)
        return cls(128, 32 if triple.startswith("aarch64") else 16)  # NEON: 32 q registers on aarch64, 16 on armv7

    def lanes(self, dtype: str) -> int:
        return max(1, self.vector_bits // (np.dtype(dtype).itemsize * 8))


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _block_kinds(sch: s_tir.Schedule, block) -> str:
    """One letter an iteration variable: S (spatial), R (reduction), O (other)."""
    kinds = []
    for iter_var in sch.get(block).iter_vars:
        kinds.append({tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}.get(int(iter_var.iter_type), "O"))
    return "".join(kinds)


def _loops_match_iters(sch: s_tir.Schedule, block) -> bool:
    """The block's loops are exactly its iteration variables, in order (as TE/topi emits them)."""
    loops = sch.get_loops(block)
    realize = sch.get_sref(block).stmt
    return len(loops) == len(realize.iter_vars)


def _loops_by_kind(sch: s_tir.Schedule, block) -> tuple[list, list]:
    """The block's spatial loops and its reduction loops, in order, for a block whose loops are its iteration
    variables one to one."""
    pairs = list(zip(sch.get_loops(block), _block_kinds(sch, block), strict=True))
    return [loop for loop, kind in pairs if kind == "S"], [loop for loop, kind in pairs if kind == "R"]


# A reduction shared between the cores is cut into the first of these numbers of chunks that divides the loop it
# is cut along: each core reduces whole chunks (two cores, four chunks each; four cores, two), the partial
# results are reduced last.
REDUCTION_CHUNKS = (8, 4, 2)


def _chunks_outermost(sch: s_tir.Schedule, block, loop, chunks: int):
    """``loop`` of ``block`` split into ``chunks`` chunks, the loop over the chunks moved outermost (for
    ``rfactor``); returns that loop."""
    chunk, _ = sch.split(loop, [chunks, None])
    sch.reorder(chunk, *[other for other in sch.get_loops(block) if not _same(sch, other, chunk)])
    return chunk


def _output_names(sch: s_tir.Schedule) -> set[str]:
    """The names of the blocks writing the function's outputs (which cannot be inlined)."""
    return {sch.get(block).name_hint for block in sch.get_output_blocks(sch.get_sblock("root"))}


def try_inline_all(sch: s_tir.Schedule, keep: set[str]) -> None:
    """Inline every block not in ``keep`` into its consumers, as long as one can be."""
    changed = True
    while changed:
        changed = False
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            name = sch.get(block).name_hint
            if name in keep:
                continue
            try:
                sch.compute_inline(block)
                changed = True
                break
            except s_tir.ScheduleError:
                pass


def _is_pointwise_consumer(sch: s_tir.Schedule, consumer, buffer) -> bool:
    """``consumer`` reads ``buffer`` element for element at its own iteration point, and writes the same shape."""
    block = sch.get(consumer)
    if str(_block_kinds(sch, consumer)).strip("S"):
        return False
    writes = block.writes
    if len(writes) != 1 or [int(x) for x in writes[0].source.shape] != [int(x) for x in buffer.shape]:
        return False
    iter_vars = [iv.var for iv in block.iter_vars]
    for region in block.reads:
        if not region.source.same_as(buffer):
            continue
        if len(region.region) != len(iter_vars):
            return False
        for rng, var in zip(region.region, iter_vars, strict=True):
            if not (isinstance(rng.extent, tirx.IntImm) and int(rng.extent) == 1 and rng.min.same_as(var)):
                return False
    return True


def _elements(buffer) -> int | None:
    shape = buffer.shape
    return int(np.prod([int(d) for d in shape])) if _static(shape) else None


def _tail_before_broadcast(sch: s_tir.Schedule, anchor) -> object | None:
    """The last of a chain of pointwise blocks on the anchor's output whose consumer broadcasts it over a larger
    map, or None.

    A squeeze-excite conv's gate (``clip(conv * a + b, 0, 1)`` over 1x1x1xC) multiplies the whole block input
    (1xHxWxC): inlined into that product, the gate's cast, multiply-add and clip ran once per map element rather
    than once per channel. Kept as a block of its own, it becomes the anchor's epilogue, computed once in the tile.
    """
    block, tail = anchor, None
    while True:
        buffer = sch.get(block).writes[0].source
        consumers = sch.get_consumers(block)
        if len(consumers) != 1:
            return None
        consumer = consumers[0]
        if not _is_pointwise_consumer(sch, consumer, buffer):
            break
        block = tail = consumer
    if tail is None or str(_block_kinds(sch, consumer)).strip("S"):
        return None
    written, out = (_elements(sch.get(b).writes[0].source) for b in (tail, consumer))
    return tail if written is not None and out is not None and out > written else None


def _epilogue(sch: s_tir.Schedule, anchor) -> object | None:
    """The anchor's single pointwise consumer (bias, activation, residual add... already inlined into one)."""
    consumers = sch.get_consumers(anchor)
    if len(consumers) != 1:
        return None
    buffer = sch.get(anchor).writes[0].source
    return consumers[0] if _is_pointwise_consumer(sch, consumers[0], buffer) else None


# Below this many loop iterations (multiply-adds, or elements) a kernel finishes before a thread pool wakes up:
# waking TVM's pool costs tens of microseconds, and small CNN layers take less than that on one core.
PARALLEL_MIN_WORK = 1 << 17
# Over a map smaller than SMALL_MAP elements, the int8 pair and quad kernels count a multiply-add instruction's
# lane as one unit of work (``MULTIPLY_ADDS_PER_LANE``): the trained CNN's 3x3 8 -> 16 quad conv over 14x14 (225
# thousand multiply-adds, 56 thousand lanes, a 3136-element map) took 1.3 us on one thread, 2.3 us and more in
# parallel on two; serial, its w8a8-static build went from 8.03 to 6.88 us (interleaved). Over larger maps the
# kernels around it run in parallel too, and a serial one reads what the other core wrote: the PP-OCR
# classifier's quad convs of 147-221 thousand multiply-adds over 9216-13824 elements, serial, made its
# w8a8-dynamic build 4.5 us slower (243 -> 247 us, three interleaved runs).
SMALL_MAP = 1 << 12
# ...unless the kernel reads or writes a map of ELEMENTWISE_PARALLEL_MIN elements or more (``_map_elements``): run
# serially between two parallel kernels, it reads the half of its input the other core wrote, through that core's
# cache. The PP-OCR classifier's 3x3 stride-(2, 1) depthwise conv over 1x12x96x24 (124416 multiply-adds) took
# 5 us on one thread and 10 us serially in a two-thread run; 4 us in parallel. Interleaved, 2 threads, 2 loads
# each: BlazeFace 3-4% faster in float, w8a8-static and w8a8-dynamic; PP-OCR and the CNN within 1%.
# An elementwise kernel (a quantize, a channel pad, a padded copy) does a few vector instructions per element and
# writes each once: it pays the pool's wake-up from fewer elements. Measured interleaved on a 2-core Zen 4 against
# the conv threshold: BlazeFace 10% faster in float, 9% in w8a8-static, 15% in w8a8-dynamic, whose 1x64x64x24
# quantize ran serially; the PP-OCR classifier 3-5%.
# 1 << 14 rather than 1 << 15: a serial kernel between two parallel ones reads the half of its input the other
# core wrote and writes the half the other core reads next, through the caches of both. The PP-OCR classifier's
# squeeze-excite products (1x3x96x88 and 1x2x96x200 scaled per channel, 25-38 thousand elements) took 4-8 us on
# one thread and 24-39 us of CPU as a serial kernel in a two-thread run (perf). Parallel, in rows as the kernels
# around them: 2-3% faster in float, w8a8-static and w8a8-dynamic; BlazeFace unchanged, mnist-cnn's code identical.
ELEMENTWISE_PARALLEL_MIN = 1 << 14


# Which axis the cores share. The thread pool cuts a fused parallel loop into one contiguous range of iterations
# per core, so its outermost loop decides it: by rows (the natural order) or, when the output is wider than it is
# tall, by columns (the loop over the second-innermost axis first: the width of an NHWC map). Either way every
# kernel of a map cuts it the same way, so a kernel reads mostly what the same core wrote before, from its own
# cache, and a KxK window reaches (K-1)/2 rows or columns into the other core's share: the longer axis keeps that
# share small. The PP-OCR classifier's last 15 layers are 2 or 3 rows high and 96 wide: split by rows, a 5x5
# depthwise conv read both rows on each core, and the next kernel wrote into storage the other core still held.
# Measured on a 2-core Zen 4, a loop of one of its 2x96 blocks on two threads: the depthwise conv took 40 us
# against 9 alone, the squeeze-excite product 36 against 3. Split by columns, the classifier's float build went
# from 0.325 to 0.289 ms, w8a8-static 0.270 -> 0.259, w8a8-dynamic 0.348 -> 0.318 (interleaved, three loads
# each). Square maps stay split by rows: BlazeFace's float build ran 11% slower split by columns.
def _split_by_columns(columns: int | None, above: int) -> bool:
    """Whether a kernel whose output has ``columns`` on its second-innermost axis and ``above`` iterations over the
    axes outside it (rows, batch) shares its work by columns; see the note above."""
    return columns is not None and columns > above


def _product(sch: s_tir.Schedule, loops) -> int:
    return int(np.prod([_extent(sch, loop) or 1 for loop in loops]))


def _work(sch: s_tir.Schedule, block) -> int:
    work = 1
    for iter_var in sch.get(block).iter_vars:
        extent = iter_var.dom.extent
        work *= int(extent) if isinstance(extent, tirx.IntImm) else 1 << 10
    return work


def _map_elements(sch: s_tir.Schedule, block) -> int:
    """Elements of the largest activation ``block`` writes or reads: its output, and each input indexed along the
    output's rows or columns (not the weights, which only the output channel and the reduction index)."""
    stmt = sch.get(block)
    outer = [iter_var.var for iter_var in _iters(stmt, tirx.IterVar.DataPar)[:-1]]
    maps = [stmt.writes[0]] + [
        region
        for region in _input_regions(stmt)
        if any(_uses(axis.min, var) for axis in region.region for var in outer)
    ]
    return max((n for n in (_elements(region.source) for region in maps) if n is not None), default=0)


def _worth_parallel(work: int) -> bool:
    return work >= PARALLEL_MIN_WORK


def _pick(extent: int, candidates) -> int:
    for factor in candidates:
        if factor <= extent and extent % factor == 0:
            return factor
    return 1


_COMPARISONS = (tirx.LT, tirx.LE, tirx.GT, tirx.GE)
MIN_PARTITIONED_LANES = 4  # a padding edge that splits vectors finer than this keeps TVM's scalar code


def _padding_edges(sch: s_tir.Schedule, block) -> set[int]:
    """The constants inside its range that the block's ``if_then_else`` conditions compare its innermost iteration
    variable with: the edges of a zero padding inlined into it (a residual's channels padded from 28 to 32:
    ``c < 28``)."""
    body = sch.get(block)
    var = body.iter_vars[-1].var if body.iter_vars else None
    extent = body.iter_vars[-1].dom.extent if body.iter_vars else None
    edges: set[int] = set()

    def visit(node, in_condition: bool) -> None:
        if isinstance(node, _COMPARISONS) and in_condition:
            for side, other in ((node.a, node.b), (node.b, node.a)):
                if isinstance(other, tirx.IntImm) and side.same_as(var):
                    edges.add(int(other.value))
        if isinstance(node, ir.Call) and getattr(node.op, "name", "") == "prim.if_then_else":
            visit(node.args[0], True)
            for arg in node.args[1:]:
                visit(arg, in_condition)
            return
        for field in ("a", "b", "value", "condition", "true_value", "false_value"):
            child = getattr(node, field, None)
            if isinstance(child, ir.Expr):
                visit(child, in_condition)
        for field in ("args", "indices"):
            for child in getattr(node, field, None) or ():
                if isinstance(child, ir.Expr):
                    visit(child, in_condition)

    if var is not None and isinstance(body.body, tirx.BufferStore):
        visit(body.body.value, False)
    inside = int(extent) if isinstance(extent, tirx.IntImm) else 0
    return {edge for edge in edges if 0 < edge < inside}


def _vectorize_across_edges(sch: s_tir.Schedule, loop, lanes: int, edges: set[int]) -> object | None:
    """Vectorise ``loop`` (the innermost axis) in vectors that no padding edge cuts, the edges left to TVM's loop
    partitioning, and return the loop over the vectors; None when there is no edge, or when the vectors would be
    narrower than ``MIN_PARTITIONED_LANES``.

    A condition that differs between a vector's lanes makes TVM's ``VectorizeLoop`` scalarise the whole loop
    (BlazeFace's max-pool + channel pad + residual add: 38 us for 32768 elements, two threads). With vectors
    that each fall on one side of every edge, and the loop over vectors marked ``pragma_loop_partition_hint``,
    ``LoopPartition`` splits that loop at the edges and each part keeps a constant condition.
    """
    if not edges:
        return None
    extent = _extent(sch, loop) or 0
    width = int(np.gcd.reduce([lanes, extent, *edges]))
    if width < MIN_PARTITIONED_LANES or width & (width - 1):
        return None
    outer, vec = sch.split(loop, [None, width])
    sch.annotate(outer, "pragma_loop_partition_hint", 1)
    sch.vectorize(vec)
    return outer


def _fuse_narrow_inner(sch: s_tir.Schedule, block) -> None:
    """Fuse the two innermost loops when the innermost is too narrow for a vector (fewer than 4 iterations: an
    input's 3 channels) and every buffer the block touches is indexed by those two loops as its own last two axes,
    or not at all: the fused loop walks contiguous memory (``(f // C) * C + f % C`` simplifies to ``f``) and
    vectorises. BlazeFace's 1x128x128x3 input: its quantize 7 -> 2 us, its max|x| 27 -> 2."""
    loops = sch.get_loops(block)
    if len(loops) < 2 or (_extent(sch, loops[-1]) or 4) >= 4 or not _loops_match_iters(sch, block):
        return
    inner = [iv.var for iv in sch.get(block).iter_vars][-2:]
    for region in [*sch.get(block).reads, *sch.get(block).writes]:
        starts = [r.min for r in region.region]
        if not any(_uses(start, var) for start in starts for var in inner):
            continue
        if len(starts) < 2 or not (starts[-2].same_as(inner[0]) and starts[-1].same_as(inner[1])):
            return
        if any(_uses(start, var) for start in starts[:-2] for var in inner):
            return
    sch.fuse(loops[-2], loops[-1])


def schedule_elementwise(sch: s_tir.Schedule, block, facts: CPUFacts, dtype: str) -> None:
    """Parallel outer loops, vectorised innermost axis when it divides into whole vectors."""
    _fuse_narrow_inner(sch, block)
    loops = sch.get_loops(block)
    if not loops:
        return
    lanes = facts.lanes(dtype)
    columns = loops[-2] if len(loops) >= 2 else None
    inner = _extent(sch, loops[-1]) or 0
    if inner > lanes and inner % lanes:
        lanes = vector_width(inner, lanes)  # 200 int8 channels: 8-byte vectors rather than scalar code
    vectorized = True
    partitioned = _vectorize_across_edges(sch, loops[-1], lanes, _padding_edges(sch, block))
    if partitioned is not None:
        loops = [*loops[:-1], partitioned]
    elif inner > lanes > 1 and inner % lanes == 0:
        outer, vec = sch.split(loops[-1], [None, lanes])
        loops = [*loops[:-1], outer]
        sch.vectorize(vec)
    elif 4 <= inner <= lanes * 4 and inner % 4 == 0:
        vec = loops[-1]
        loops = loops[:-1]
        sch.vectorize(vec)
    else:
        vectorized = False
    if not loops:
        return
    # Fuse the outer loops only: a loop fused with the inner ones recovers each index with a division and a
    # modulo per element (a first conv's 3-channel pad spent more time there than copying).
    inner_loops = min(1 if vectorized else 2, len(loops) - 1)
    outer_loops = loops[: len(loops) - inner_loops]
    if (
        columns is not None
        and len(outer_loops) > 1
        and _same(sch, outer_loops[-1], columns)
        and _split_by_columns(_extent(sch, columns), _product(sch, outer_loops[:-1]))
    ):
        sch.reorder(columns, *outer_loops[:-1])
        outer_loops = [columns, *outer_loops[:-1]]
    fused = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
    if (_extent(sch, fused) or 0) < 8 and inner_loops:  # too few outer iterations to share: fuse them all
        fused = sch.fuse(fused, *loops[len(loops) - inner_loops :])
    if _work(sch, block) >= ELEMENTWISE_PARALLEL_MIN and (_extent(sch, fused) or 0) > 1:
        sch.parallel(fused)


@dataclass(frozen=True)
class TileChoice:
    rows: int  # register-tile rows (second-innermost spatial axis)
    cols: int  # register-tile columns (innermost spatial axis, vectorised)


def vector_width(cols: int, lanes: int) -> int:
    """Lanes of the vectors a ``cols``-wide tile row is computed in: whole registers where they divide it, else
    the widest power of two that does (28 channels: 4 x 7 xmm on AVX2), 1 for none."""
    if cols % lanes == 0:
        return lanes
    width = lanes
    while width > 1 and cols % width:
        width //= 2
    return width


HALF_VECTOR_MIN_LANES = 8  # choose_tile tries half a register only where that is a whole ymm (AVX-512)


def choose_tile(
    rows_extent: int, cols_extent: int, lanes: int, facts: CPUFacts, shared_input: bool = False
) -> TileChoice:
    """Largest register tile that fits the SIMD register file with room for operands.

    Columns: the whole axis when it fits in four vectors (28 channels become 3.5 AVX2 vectors, which LLVM splits
    into ymm + xmm), else whole vectors that divide it: four, three or two. With ``shared_input`` (one input value
    broadcast across the columns: a conv summing input channels), five too: 200 channels as 5 vectors x 2 rows
    load 7 operands per 10 multiply-adds, where 1 x 8 loaded 9 per 8 (PP-OCR's 1x1 32->200 conv: 52 -> 42 us, one
    thread). On AVX-512, where 16 lanes divide none of these, the same in whole ymm halves: PP-OCR's 88 and 104
    channels had become 44- and 52-wide tiles of xmm quarters, and its 5x5 depthwise convs over them ran 2.5x
    slower than in 8-wide ymm tiles, its 1x1 16->88 conv 1.7x. A depthwise conv or a pool loads a vector of
    input per multiply-add whatever the tile, and more columns only cost it rows that share a weight vector
    (PP-OCR's 5x5 depthwise: 55 -> 76 us).
    """
    if cols_extent <= lanes * 4:
        cols = cols_extent
    else:
        widths = [lanes, lanes // 2] if lanes // 2 >= HALF_VECTOR_MIN_LANES else [lanes]
        cols = 1
        for width in widths:
            wide = [width * 5] if shared_input else []
            cols = _pick(cols_extent, [width * 4, width * 3, width * 2, *wide, width])
            if cols > 1:
                break
        if cols == 1:
            cols = _pick(cols_extent, [d for d in range(lanes * 4, 3, -1) if d % 4 == 0])
    # Registers: rows x vectors accumulators, the vectors of weights every row multiplies, and the broadcast input.
    # Counting only the accumulators spilled on AVX-512: 7 x 4 zmm accumulators for 64 channels, where 4 x 4 run
    # a 3x3 64->64 conv 1.7-2.2x faster (56x56, 28x28).
    if not shared_input:
        return _unshared_tile(rows_extent, cols_extent, cols, lanes, facts)
    vectors = max(1, -(-cols // vector_width(cols, lanes)))
    max_rows = max(1, (facts.registers - vectors - 1) // vectors)
    rows = _pick(rows_extent, [r for r in (8, 7, 6, 5, 4, 3, 2) if r <= max_rows])
    return TileChoice(rows, cols)


# Accumulators of a tile whose input is not shared across its columns (depthwise convs, pools). Such a tile loads
# an input vector per multiply-add and, at the edges of the map, selects it against zero padding; LLVM needs
# registers for both. PP-OCR's 5x5 depthwise convs, one thread, on AVX-512: over 1x3x96x48, 8 rows x 3 zmm
# (24 accumulators) 15.8 us, 8 x 1 zmm 6.3; over 1x3x96x40, 8 x 5 ymm 19.3 us, 8 x 1 ymm 6.0; over 1x6x96x32,
# 8 x 2 zmm 9.2 us, 4 x 2 zmm 4.7. On AVX2 (16 registers) the same eight: 4 left the 1x6x96x32 conv at 8.0 us
# against 5.4-5.7 with 8 or 16, and 8 took the 1x6x96x24 3x3 from 10.9 us (24 ymm) to 3.4.
UNSHARED_ACCUMULATORS = 8


def _unshared_tile(rows_extent: int, cols_extent: int, cols: int, lanes: int, facts: CPUFacts) -> TileChoice:
    """The tile with the most accumulators up to ``UNSHARED_ACCUMULATORS`` (fewer where the register file is
    smaller), its columns either ``cols`` or one vector of them; on a tie, the wider."""
    budget = min(UNSHARED_ACCUMULATORS, facts.registers // 2)
    best, best_count = TileChoice(1, cols), 0
    for width in sorted({cols, vector_width(cols_extent, lanes)}, reverse=True):
        if width > cols_extent or cols_extent % width:
            continue
        vectors = max(1, -(-width // vector_width(width, lanes)))
        rows = _pick(rows_extent, [r for r in (8, 7, 6, 5, 4, 3, 2) if r * vectors <= budget])
        if rows * vectors > best_count:
            best, best_count = TileChoice(rows, width), rows * vectors
    return best


def whole_map_columns(cols_extent: int, lanes: int, facts: CPUFacts) -> int:
    """Columns of a per-channel reduction over a whole map (a squeeze-excite's mean, a dynamic gated input's
    per-channel max): the tile has one row, so its vectors are the only accumulators in flight, each a chain of
    one add per pixel. ``choose_tile`` gave PP-OCR's 200 channels one 8-lane vector per task, 192 dependent adds
    (3.5 us for 1x2x96x200, 3.0 for 1x3x96x88 in 11 tasks); all the channels that fit the registers in one
    tile run as many independent chains (whole vectors of a width that divides the channels)."""
    widths = [lanes, lanes // 2] if lanes // 2 >= HALF_VECTOR_MIN_LANES else [lanes]
    budget = facts.registers - 2
    for width in widths:
        fitting = [d for d in range(width, cols_extent + 1, width) if cols_extent % d == 0 and d // width <= budget]
        if fitting:
            return max(fitting)
    return choose_tile(1, cols_extent, lanes, facts).cols


# A pair or quad kernel's accumulators are independent chains of ``vpmaddwd`` / ``vpdpbusd``, each instruction
# waiting for the one before it in its chain (about 5 cycles, two issued a cycle on Zen 4): a tile of fewer than
# eight leaves the multiply units idle. Where the most reuse within 12 accumulators gives fewer (the trained CNN's
# 3x3 8 -> 16 conv over 14x14: 16 channels are 2 vectors, and 14 rows divide into 2 within 6, so 4 chains), the
# tile may take three quarters of a larger register file (32 ymm with AVX-512: 7 rows x 2 vectors, 14 chains):
# 1.57 -> 1.29 us on one thread. Raising the budget for every tile made half of the PP-OCR classifier's convs
# slower (its 1x1 16 -> 88 over 3x96: 5.1 -> 5.7 us) and the other half faster.
PAIR_ACCUMULATORS = 12
PAIR_MIN_ACCUMULATORS = 8


def choose_pair_tile(rows_extent: int, cols_extent: int, registers: int = 16) -> TileChoice:
    """The ``vpmaddwd`` / ``vpdpbusd`` kernel's tile: the most multiply-adds per operand load within 12
    accumulators, or within three quarters of ``registers`` where that leaves fewer than 8 (see above).

    Each step loads one weight vector per column vector and broadcasts one input pair per row, so a tile of
    ``rows x vectors`` does ``rows * vectors`` multiply-adds for ``rows + vectors`` loads. 24 output channels as
    3 vectors x 4 rows do 12 per 7 loads where 1 x 4 did 4 per 5 (BlazeFace's 64x64 1x1 24->24 conv: 65 -> 57 us,
    one thread).
    Rows divide their axis: a remainder would leave the tensorized loop under a predicate.
    """
    tile = _most_reuse(rows_extent, cols_extent, PAIR_ACCUMULATORS)
    if tile.rows * tile.cols // PAIR_LANES < PAIR_MIN_ACCUMULATORS:
        wider = _most_reuse(rows_extent, cols_extent, max(PAIR_ACCUMULATORS, registers * 3 // 4))
        if wider.rows * wider.cols > tile.rows * tile.cols:
            return wider
    return tile


def _most_reuse(rows_extent: int, cols_extent: int, accumulators: int) -> TileChoice:
    """The tile with the most multiply-adds per operand load within ``accumulators`` vectors."""
    best = TileChoice(1, PAIR_LANES)
    best_score = 0.0
    for vectors in (6, 5, 4, 3, 2, 1):
        if cols_extent % (vectors * PAIR_LANES):
            continue
        rows = _pick(rows_extent, [r for r in range(accumulators // vectors, 0, -1)])
        score = rows * vectors / (rows + vectors)
        if score > best_score:
            best, best_score = TileChoice(rows, vectors * PAIR_LANES), score
    return best


def _tile_split(sch: s_tir.Schedule, loop, inner: int, max_inner: int) -> tuple:
    """``(outer, inner loop, factor)`` of ``split(loop, [None, inner])``, with ``inner`` a MetaSchedule decision
    among the loop's other tile sizes (``factor``: the decision's variable, or ``inner``).

    The candidates are the divisors of the extent from 2 to ``max_inner`` (no unit loop, whose absence would
    change the loops a replayed trace gets). A compile replays the default decision; the tuner's
    ``TileNeighbours`` mutator (``pipeline.tune``) moves it to the next candidate up or down, so a search that
    starts from the default schedule tries its neighbouring tiles.
    """
    extent = _extent(sch, loop)
    divisors = range(2, min(extent, max_inner) + 1) if extent else ()
    candidates = sorted({d for d in divisors if extent % d == 0} | {inner})
    factor = inner
    if inner != 1 and len(candidates) >= 2:
        factor = sch.sample_categorical(
            candidates=candidates, probs=[1.0 / len(candidates)] * len(candidates), decision=candidates.index(inner)
        )
    return (*sch.split(loop, [None, factor]), factor)


def _iters(block, kind: int) -> list:
    """The block's iteration variables of ``kind`` (``tirx.IterVar.DataPar`` or ``CommReduce``), in order."""
    return [iv for iv in block.iter_vars if int(iv.iter_type) == kind]


def _reduction_vars(block) -> list:
    return [iv.var for iv in _iters(block, tirx.IterVar.CommReduce)]


def _input_regions(block) -> list:
    """What the block reads besides its own output (an accumulating update reads that too)."""
    output = block.writes[0].source
    return [region for region in block.reads if not region.source.same_as(output)]


def _kernel_of(sch: s_tir.Schedule, block) -> str | None:
    kernel = sch.get(block).annotations.get("edgetvm.kernel")
    return str(kernel) if kernel is not None else None


def is_dot_form(sch: s_tir.Schedule, anchor) -> bool:
    """The innermost reduction variable indexes the innermost, contiguous axis of every input the block reads.

    That is an int8 conv2d with OHWI weights (see ``int8_conv_layout``): both operands run along input
    channels, the shape LLVM's loop vectoriser turns into widening dot-product instructions.
    """
    block = sch.get(anchor)
    reduction_vars = _reduction_vars(block)
    if not reduction_vars:
        return False
    inner = reduction_vars[-1]
    inputs = _input_regions(block)
    return len(inputs) == 2 and all(
        region.region[-1].min.same_as(inner) and int(region.region[-1].extent) == 1 for region in inputs
    )


def _window_row_is_contiguous(sch: s_tir.Schedule, anchor) -> bool:
    """The two innermost reduction variables index the inputs' last two axes as ``x * stride + kx`` and ``c``
    (no dilation), so (kernel column, input channel) is one contiguous run in NHWC activations and OHWI weights."""
    block = sch.get(anchor)
    reduction_vars = _reduction_vars(block)
    if len(reduction_vars) < 2:
        return False
    kx = reduction_vars[-2]
    for region in _input_regions(block):
        index = region.region[-2].min
        if not (isinstance(index, tirx.Add) and index.b.same_as(kx)) and not index.same_as(kx):
            return False
    return True


def _input_is_shared(sch: s_tir.Schedule, anchor) -> bool:
    """Some input the block reads is indexed without the innermost spatial (column) variable: one value
    broadcast across a tile row (a conv's input channel, which every output channel sums), not a vector per
    column (depthwise, pooling). The block's loops match its iteration variables (``_loops_match_iters``)."""
    block = sch.get(anchor)
    spatial = _iters(block, tirx.IterVar.DataPar)
    if not spatial:
        return False
    cols_var = spatial[-1].var
    return any(not any(_uses(axis.min, cols_var) for axis in region.region) for region in _input_regions(block))


def _uses(expr, var) -> bool:
    return any(free.same_as(var) for free in tirx.analysis.undefined_vars(expr))


# Dot-form tile: rows x cols scalar accumulators, each vectorised by LLVM along the reduction.
DOT_TILE = TileChoice(rows=4, cols=4)
MAX_TILE_ROWS = 16  # how far tuning may grow a tile: rows (or dot-form columns), and vectors of columns
MAX_TILE_VECTORS = 6


def schedule_reduction_tile(
    sch: s_tir.Schedule, anchor, facts: CPUFacts, reduced: tuple = (), operands: tuple = ()
) -> object:
    """The register-tiled kernel for conv2d / depthwise / matmul / pooling blocks (see the module docstring).

    In dot form (``is_dot_form``) the innermost reduction loop stays innermost and scalar in TIR, for LLVM to
    vectorise into widening multiply-adds; the tile's accumulators are then whole vectors of partial sums.
    ``reduced``: full reductions of the epilogue's output (``_reduce_in_tile``); ``operands``: elementwise blocks
    writing an operand the tile reads as stored (``_compute_in_tile``).
    Returns the fused parallel loop, under which the anchor, its init and its epilogue now live.
    """
    work = _work(sch, anchor)
    map_elements = _map_elements(sch, anchor)
    dot = is_dot_form(sch, anchor)
    spatial, reduction = _loops_by_kind(sch, anchor)
    out_dtype = str(sch.get(anchor).writes[0].source.dtype)
    lanes = facts.lanes(out_dtype)

    # The accumulators: a tile-sized buffer inside the parallel loop, which LLVM keeps in registers. It stays in
    # "global" scope: TVM puts small constant-size global allocations on the stack, but every "local" one goes
    # through TVMBackendAllocWorkspace, a call per tile.
    epilogue = _epilogue(sch, anchor)
    if epilogue is None:
        epilogue = sch.cache_write(anchor, 0, "global")  # accumulate in a tile, write it out once

    cols_loop = spatial[-1]
    cols_extent = _extent(sch, cols_loop) or 1
    rows_candidates = [loop for loop in spatial[:-1] if (_extent(sch, loop) or 1) > 1]
    rows_loop = rows_candidates[-1] if rows_candidates else None
    rows_extent = _extent(sch, rows_loop) if rows_loop is not None else 1
    intrinsic = PAIR_INTRINSICS.get(_kernel_of(sch, anchor))
    pairs = intrinsic is not None
    if pairs:
        dot = False
        tile = choose_pair_tile(rows_extent, cols_extent, facts.registers)
        if map_elements < SMALL_MAP:
            work //= MULTIPLY_ADDS_PER_LANE[_kernel_of(sch, anchor)]
    elif dot:
        tile = TileChoice(
            _pick(rows_extent, range(DOT_TILE.rows, 0, -1)), _pick(cols_extent, range(DOT_TILE.cols, 0, -1))
        )
    elif rows_loop is None and reduction and not _input_is_shared(sch, anchor):
        tile = TileChoice(1, whole_map_columns(cols_extent, lanes, facts))
    else:
        tile = choose_tile(rows_extent, cols_extent, lanes, facts, _input_is_shared(sch, anchor))

    # Lanes: one vpmaddwd's 8 in the pair kernel, one hardware vector per instruction in float (LLVM scalarises
    # much of a 24- or 28-wide vector's arithmetic), none in dot form (LLVM vectorises its reduction).
    lane = PAIR_LANES if pairs else 1 if dot else vector_width(tile.cols, lanes)
    # How the output's axes are cut: the inner split factors of each (none for an axis the tile leaves whole), and
    # the axes in the order the parallel loop fuses their outer parts (``_reduce_in_tile`` cuts alike).
    axes = len(spatial)
    cuts: list[list] = [[] for _ in range(axes)]
    if lane > 1:
        c_all, c_lane = sch.split(cols_loop, [None, lane])
        c_outer, c_vec, vec_factor = _tile_split(sch, c_all, tile.cols // lane, MAX_TILE_VECTORS)
        col_loops = [c_vec, c_lane]
        cuts[-1] = [vec_factor, lane]
    else:
        c_outer, c_inner, cols_factor = _tile_split(sch, cols_loop, tile.cols, MAX_TILE_ROWS)
        col_loops = [c_inner]
        cuts[-1] = [cols_factor]
    outer_axes = [i for i, loop in enumerate(spatial[:-1]) if loop != rows_loop]
    outer = [spatial[i] for i in outer_axes]
    if rows_loop is not None:
        rows_axis = spatial.index(rows_loop)
        r_outer, r_inner, rows_factor = _tile_split(sch, rows_loop, tile.rows, MAX_TILE_ROWS)
        cuts[rows_axis] = [rows_factor]
        if _split_by_columns(rows_extent, _product(sch, outer)):
            outer_loops = [r_outer, *outer, c_outer]
            axis_order = [rows_axis, *outer_axes, axes - 1]
        else:
            outer_loops = [*outer, r_outer, c_outer]
            axis_order = [*outer_axes, rows_axis, axes - 1]
        tile_loops = [r_inner, *col_loops]
    else:
        outer_loops = [*outer, c_outer]
        axis_order = [*outer_axes, axes - 1]
        tile_loops = col_loops
    tile_cols = int(np.prod([_extent(sch, loop) or 1 for loop in col_loops]))  # tile.cols unless tuning mutated it
    channel_tiles = _extent(sch, c_outer)
    if dot and len(reduction) >= 2 and _window_row_is_contiguous(sch, anchor):
        # NHWC with OHWI weights: (kernel column, input channel) is one contiguous run in both operands,
        # so one longer dot loop replaces kw short ones (and their horizontal sums).
        sch.reorder(*outer_loops, *reduction[:-2], *tile_loops, *reduction[-2:])
        reduction = [*reduction[:-2], sch.fuse(reduction[-2], reduction[-1])]
    elif dot or pairs:
        # pairs: ... ry, rx, rc | rows, vectors, 8 lanes x 2 channels -> one vpmaddwd
        sch.reorder(*outer_loops, *reduction[:-1], *tile_loops, reduction[-1])
    else:
        sch.reorder(*outer_loops, *reduction, *tile_loops)
    # An operand computed beside several channel tiles (a dynamic layer's input quantize) is computed once per
    # pixel block in the tile instead where the tile is one vector of channels: each task then takes one block of
    # pixels, quantizes it and runs its channel tiles one after the other, with no barrier between a quantize
    # phase and the tiles (``share_parallel_launches``). PP-OCR's 1x3x96x16 -> 88 and -> 104 convs (12 pixels x 8
    # channels): 4.16 -> 3.63-3.83 and 4.67 -> 4.16 us on two threads of a Zen 4. With wider tiles (2 x 40, 4 x 24)
    # LLVM keeps the block's input broadcasts in registers across the channel tiles and spills the accumulators
    # (1x2x96x32 -> 200: 6.8 -> 7.7 us): those keep the quantize beside the tiles.
    pixel_tasks = bool(operands) and channel_tiles > 1 and not reduced and len(outer_loops) > 1 and tile_cols <= lane
    if pixel_tasks:
        parallel = sch.fuse(*outer_loops[:-1]) if len(outer_loops) > 2 else outer_loops[0]
        tile_root = outer_loops[-1]  # the channel tiles, one after the other in the task
    else:
        parallel = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
        tile_root = parallel
    sch.reverse_compute_at(epilogue, tile_root)
    # A second output computed from the epilogue's (a quantize joined by ``join_quantize_outputs``): in the tile too.
    written = sch.get(epilogue).writes[0].source
    also = [c for c in sch.get_consumers(epilogue) if _is_pointwise_consumer(sch, c, written)]
    for consumer in also:
        sch.reverse_compute_at(consumer, tile_root)
    # An operand's producer (a quantize joined by ``quantize_in_consumer``) in the tile, on the pixels it reads,
    # where one tile covers every output channel or each task takes every channel tile of its pixels. Computed in
    # every tile of several, it would quantize the same pixels again: PP-OCR's 88-200-channel layers gained
    # nothing and BlazeFace's w8a8-dynamic lost 3%.
    if channel_tiles == 1 or pixel_tasks:
        for block in operands:
            _compute_in_tile(sch, block, parallel, facts)
    for block in reduced:
        width = vector_width(tile_cols, facts.lanes(_dtype_of(sch, block)))
        _reduce_in_tile(sch, block, parallel, cuts, axis_order, width)
    if (_worth_parallel(work) or map_elements >= ELEMENTWISE_PARALLEL_MIN) and (_extent(sch, parallel) or 2) > 1:
        sch.parallel(parallel)
    vectorized = lane > 1
    if vectorized and not pairs:
        sch.vectorize(tile_loops[-1])
    if reduction:
        # Zero the accumulators before the first loop under the parallel one: in dot form without a kernel window
        # (dense) that is the tile, since with the zeroing inside the tile LLVM left the dot loops scalar.
        first = (reduction[:-1] or tile_loops) if dot else reduction
        init = sch.decompose_reduction(anchor, first[0])
        if vectorized:
            sch.vectorize(sch.get_loops(init)[-1])
    if pairs:
        sch.tensorize(tile_loops[-1], intrinsic)
        tile_loops = tile_loops[:-1]
        reduction = []
    for loop in tile_loops if dot or pairs else tile_loops[:-1]:
        sch.unroll(loop)
    for loop in () if dot else reduction:
        extent = _extent(sch, loop)
        if extent is not None and extent <= 7:
            sch.unroll(loop)
    # The epilogue: vectorise its innermost axis.
    for block in [epilogue, *also]:
        epi_loops = sch.get_loops(block)[1:]
        if epi_loops and (_extent(sch, epi_loops[-1]) or 0) == tile_cols:
            inner = epi_loops[-1]
            epilogue_width = vector_width(tile_cols, facts.lanes(_dtype_of(sch, block)))
            partitioned = _vectorize_across_edges(sch, inner, epilogue_width, _padding_edges(sch, block))
            if partitioned is None:  # else vectorised around a residual's padded channels
                _vectorize_in(sch, inner, epilogue_width)
    return parallel


def _realize(sch: s_tir.Schedule, block):
    """The block's ``SBlockRealize`` (its iteration variables' bindings), alone in its innermost loop."""
    body = sch.get(sch.get_loops(block)[-1]).body
    if not isinstance(body, s_tir.SBlockRealize):
        raise s_tir.ScheduleError(f"{sch.get(block).name_hint} does not sit alone in its innermost loop")
    return body


def _reduce_in_tile(sch: s_tir.Schedule, block, parallel, cuts: list[list], axis_order: list[int], width: int):
    """Compute a full reduction of the tile's output (``max(maximum(|y|, eps))``, the next layer's dynamic
    quantization scale, joined by ``join_quantize_outputs``) in the tile, while ``y`` is in registers.

    The reduction's loops over ``y``'s axes are cut as the tile's (``cuts``: the inner split factors of each axis,
    ``axis_order``: the order the parallel loop fuses the outer parts in), so one partial result per parallel
    iteration and vector lane, ``P[task, lane]``, reads exactly the tile the iteration wrote; ``P`` is reduced over
    the tasks in vectors, then over the lanes. Raises ``s_tir.ScheduleError`` when the tile does not cut ``y``'s
    axes as its own (the caller then reduces ``y`` after the tile).
    """
    loops = sch.get_loops(block)
    if len(loops) != len(cuts):
        raise s_tir.ScheduleError("the reduction's loops are not the tile's output axes")
    pieces = [sch.split(loop, [None, *cut]) if cut else [loop] for loop, cut in zip(loops, cuts, strict=True)]
    inner = [loop for piece in pieces for loop in piece[1:]]
    last = (_extent(sch, inner[-1]) if inner else None) or 0
    if last > width > 1 and last % width == 0:
        inner[-1:] = sch.split(inner[-1], [None, width])
    elif not 4 <= last <= width:
        # one scalar chain of maxima per tile would cost more than the separate pass over y it replaces
        raise s_tir.ScheduleError("the tile's columns do not make whole vectors")
    outer = [pieces[axis][0] for axis in axis_order]
    sch.reorder(*outer, *inner)
    if len(outer) > 1:
        sch.fuse(*outer)  # the partial results' task axis: the parallel loop's
    by_lane = sch.rfactor(inner[-1], 0)  # by_lane[lane]: the maximum over all but the lane
    partial = sch.rfactor(sch.get_loops(by_lane)[0], 0)  # partial[task, lane]
    sch.reverse_compute_at(partial, parallel)
    task = sch.get(parallel).loop_var
    for reducing, besides in ((partial, task), (by_lane, None)):  # lanes innermost and vectorised
        lane = _spatial_loop(sch, reducing, besides)
        sch.reorder(*[loop for loop in sch.get_loops(reducing)[1:] if not _same(sch, loop, lane)], lane)
        sch.vectorize(lane)


def _spatial_loop(sch: s_tir.Schedule, block, besides) -> object:
    """The loop that a spatial iteration variable of ``block`` (other than one bound to ``besides``) is bound to."""
    realize = _realize(sch, block)
    value = next(
        value
        for value, iv in zip(realize.iter_values, realize.block.iter_vars, strict=True)
        if int(iv.iter_type) == tirx.IterVar.DataPar and (besides is None or not value.same_as(besides))
    )
    return next(loop for loop in sch.get_loops(block) if sch.get(loop).loop_var.same_as(value))


def _reads_operands_as_stored(sch: s_tir.Schedule, anchor) -> bool:
    """The pair/quad kernels' tensor intrinsics and the dot form read their operands as plain loads."""
    return _kernel_of(sch, anchor) in PAIR_INTRINSICS or is_dot_form(sch, anchor)


def _root_blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _is_trivial_pad(sch: s_tir.Schedule, block) -> bool:
    """A copy block topi emits for zero padding (``pad_temp = data``): inlining it costs nothing."""
    body = sch.get(block).body
    return isinstance(body, tirx.BufferStore) and isinstance(body.value, ir.TensorLoad)


def _is_padding(sch: s_tir.Schedule, block) -> bool:
    """A zero-padding block: ``pad_temp[...] = if_then_else(in bounds, data[...], 0)``."""
    body = sch.get(block).body
    value = body.value if isinstance(body, tirx.BufferStore) else None
    return isinstance(value, ir.Call) and getattr(value.op, "name", "") == "prim.if_then_else"


COPY_MIN_REUSE = 64  # multiply-adds per input value from which a few-channel conv reads a padded copy


def _padding_inlines_well(sch: s_tir.Schedule, anchor, facts: CPUFacts) -> bool:
    """Whether the anchor should read its input through the padding's bounds check instead of from a padded copy.

    Yes where each input vector feeds few multiply-adds: a depthwise conv or a pool (no input value shared across
    output channels), or a conv summing fewer input channels than a vector holds (a first layer over 3 colour
    channels, whose padded copy is scalar code). The copy was a serial pass over the whole input, longer than
    the conv on two threads: PP-OCR's 5x5 depthwise 58 -> 25 us (one thread), 66 -> 13 us (two); BlazeFace's
    first conv 283 -> 171 us (two threads). Convs that sum many channels read each input value once per output
    tile row and keep the copy (3x3 64->64: 2.13 ms with it, 2.31 without), and the int8 pair and dot kernels,
    whose inner loops cannot take a bounds check (3x3 int8: 0.33 -> 13.7 ms), always do.

    Since copies run in parallel, a few-channel conv whose every input value feeds ``COPY_MIN_REUSE`` or more
    multiply-adds reads a copy too: with BlazeFace's first conv (5x5 stride 2, 3 -> 24 channels, 143 per input
    value) reading one, its float build went from 0.532 to 0.516 ms on two threads (interleaved runs; the conv
    timed alone moved by 1.5x between runs), while PP-OCR's (3x3 stride 2, 3 -> 8, 18 per value) took 8 us
    through the check and 32 us with the copy.
    """
    if _kernel_of(sch, anchor) in PAIR_INTRINSICS or is_dot_form(sch, anchor):
        return False
    if not _input_is_shared(sch, anchor):
        return True
    block = sch.get(anchor)
    reduction = _iters(block, tirx.IterVar.CommReduce)
    lanes = facts.lanes(str(block.writes[0].source.dtype))
    channels = reduction[-1].dom.extent if reduction else None
    if not (isinstance(channels, tirx.IntImm) and int(channels) < lanes):
        return False
    padded = [sch.get(p).writes[0].source for p in sch.get_producers(anchor) if _is_padding(sch, p)]
    size = int(np.prod([int(d) for d in padded[0].shape])) if padded and _static(padded[0].shape) else 0
    return not size or _work(sch, anchor) < COPY_MIN_REUSE * size


def _static(shape) -> bool:
    return all(isinstance(d, tirx.IntImm) for d in shape)


def _is_under(sch: s_tir.Schedule, block, loop_sref) -> bool:
    loops = sch.get_loops(block)
    return bool(loops) and sch.get_sref(loops[0]).same_as(loop_sref)


def _dtype_of(sch: s_tir.Schedule, block) -> str:
    return str(sch.get(block).writes[0].source.dtype)


def schedule_generic(sch: s_tir.Schedule, facts: CPUFacts) -> None:
    """Softmax, normalisations, gathers...: parallel leading spatial loops of every block."""
    for block in _root_blocks(sch):
        kinds = _block_kinds(sch, block)
        loops = sch.get_loops(block)
        leading = []
        for loop, kind in zip(loops, kinds, strict=False):
            if kind != "S":
                break
            leading.append(loop)
        if not leading:
            continue
        fused = sch.fuse(*leading) if len(leading) > 1 else leading[0]
        if _worth_parallel(_work(sch, block)) and (_extent(sch, fused) or 0) > 1:
            sch.parallel(fused)


# A full reduction reads each element once with one vector instruction: it is worth the thread pool's wake-up
# from fewer elements than a conv (max|x| of 1x64x64x24 on two threads: 6.8 -> 4.2 us; 1x16x16x88: no gain).
FULL_REDUCTION_PARALLEL_MIN = 1 << 16


def schedule_full_reduction(sch: s_tir.Schedule, block, facts: CPUFacts) -> None:
    """A tensor reduced to one value (the max|x| of dynamic quantization): vector partial results, then one more.

    The innermost axis is split into interleaved partial reductions (``rfactor``), one per lane of the widest
    vector that divides it (24 channels: 8 lanes on AVX-512, where 16 left the loop scalar: 54 -> 7 us for
    BlazeFace's 1x64x64x24, 4 us in chunks), vectorised over contiguous elements; the partials are reduced last.
    A large tensor is first cut into chunks along its rows or its columns (``_split_by_columns``), reduced in
    parallel (``rfactor`` again).
    """
    _fuse_narrow_inner(sch, block)
    loops = sch.get_loops(block)
    inner = _extent(sch, loops[-1]) or 0
    lanes = vector_width(inner, facts.lanes(_dtype_of(sch, block))) if inner else 1
    if lanes < 2:
        return
    chunked = False
    outer = next((loop for loop in loops[:-1] if (_extent(sch, loop) or 1) > 1), None)
    if len(loops) >= 2 and _split_by_columns(_extent(sch, loops[-2]), _product(sch, loops[:-2])):
        outer = loops[-2]
    if outer is not None and _work(sch, block) >= FULL_REDUCTION_PARALLEL_MIN:
        chunks = _pick(_extent(sch, outer), REDUCTION_CHUNKS)
        if chunks > 1:
            chunk = _chunks_outermost(sch, block, outer, chunks)
            block = sch.rfactor(chunk, 0)  # partial[chunk]: its chunk loop is spatial, and outermost
            chunked = True
    _, lane = sch.split(sch.get_loops(block)[-1], [None, lanes])
    partial = sch.rfactor(lane, 1 if chunked else 0)
    sch.vectorize(sch.get_loops(partial)[-1])  # the lanes: spatial in the partial block, and innermost
    partial_loops = sch.get_loops(partial)
    if chunked:
        sch.parallel(partial_loops[0])
    init = sch.decompose_reduction(partial, partial_loops[1 if chunked else 0])
    sch.vectorize(sch.get_loops(init)[-1])


def _same(sch: s_tir.Schedule, a, b) -> bool:
    return sch.get_sref(a).same_as(sch.get_sref(b))


def schedule_function(func: tirx.PrimFunc, target: Target) -> tuple[s_tir.Schedule, str]:
    """A scheduled copy of ``func`` and the name of the rule used (``generic`` when no other fits).

    Raises ``s_tir.ScheduleError`` when a primitive refuses the function's shape.
    """
    sch = s_tir.Schedule(func)
    return sch, apply_default_schedule(sch, target)


def apply_default_schedule(sch: s_tir.Schedule, target: Target) -> str:
    """Schedule ``sch`` (one fused function) in place; returns the rule's name. See ``schedule_function``."""
    facts = CPUFacts.of(target)
    blocks = _root_blocks(sch)
    reductions = [b for b in blocks if "R" in _block_kinds(sch, b)]
    if not reductions:
        try_inline_all(sch, keep=_output_names(sch))
        for block in _root_blocks(sch):
            schedule_elementwise(sch, block, facts, _dtype_of(sch, block))
        return "elementwise"
    if len(reductions) == 1 and set(_block_kinds(sch, reductions[0])) == {"R"}:
        anchor_name = sch.get(reductions[0]).name_hint
        try_inline_all(sch, keep={anchor_name})
        schedule_full_reduction(sch, sch.get_sblock(anchor_name), facts)
        return "full-reduction"
    names = [sch.get(b).name_hint for b in reductions]
    if (len(reductions) == 1 and _is_shared_channel_reduction(sch, reductions[0])) or _are_joined_channel_reductions(
        sch, reductions
    ):
        try_inline_all(sch, keep={*names, *_output_names(sch)})
        schedule_channel_reduction(sch, [sch.get_sblock(name) for name in names], facts)
        return "channel-reduction"
    layers = [name for b, name in zip(reductions, names, strict=True) if "S" in _block_kinds(sch, b)]
    if len(layers) == 1 and _loops_match_iters(sch, sch.get_sblock(layers[0])):
        # A layer, with any full reductions of its output beside it (``join_quantize_outputs``): those computed in
        # the tile where it cuts the output as ``_reduce_in_tile`` needs (tried on a copy first), else after it.
        reduced = [name for name in names if name != layers[0]]
        in_tile = bool(reduced)
        if in_tile:
            try:
                _schedule_layer(sch.copy(), layers[0], reduced, facts, in_tile=True)
            except Exception:  # any refusal on the copy (a primitive's, or a reduction not over the output)
                in_tile = False
        _schedule_layer(sch, layers[0], reduced, facts, in_tile=in_tile)
        return "reduction-tile"
    schedule_generic(sch, facts)
    return "generic"


def _schedule_layer(sch: s_tir.Schedule, anchor_name: str, reduced: list[str], facts: CPUFacts, in_tile: bool):
    """The reduction-tile rule: the block ``anchor_name`` tiled with its padding and epilogue, the full reductions
    named ``reduced`` (of the epilogue's output) computed in the tile (``in_tile``) or after it, the rest
    elementwise."""
    anchor = sch.get_sblock(anchor_name)
    keep = _output_names(sch)
    keep.update([anchor_name, *reduced])
    tail = _tail_before_broadcast(sch, anchor)
    if tail is not None:
        keep.add(sch.get(tail).name_hint)
    inline_padding = _padding_inlines_well(sch, anchor, facts)
    for producer in sch.get_producers(anchor):
        if _is_trivial_pad(sch, producer) or (inline_padding and _is_padding(sch, producer)):
            sch.compute_inline(producer)
        elif _is_padding(sch, producer) or _reads_operands_as_stored(sch, anchor):
            keep.add(sch.get(producer).name_hint)  # a padded input stays a separate, parallel copy
        # else an elementwise producer (|x| under a per-channel max): inlined, read once in the reduction
    operands = []  # what writes a plain-load operand once a trivial pad is gone: a quantize (quantize_in_consumer)
    if _reads_operands_as_stored(sch, anchor):
        operands = [sch.get(p).name_hint for p in sch.get_producers(anchor) if not _is_padding(sch, p)]
        keep.update(operands)
    try_inline_all(sch, keep)
    blocks = tuple(sch.get_sblock(name) for name in reduced) if in_tile else ()
    operand_blocks = tuple(sch.get_sblock(name) for name in operands)
    tile = schedule_reduction_tile(sch, anchor, facts, blocks, operand_blocks)
    tiled = sch.get_sref(tile)
    for block in _root_blocks(sch):
        if _is_under(sch, block, tiled) or (in_tile and "R" in _block_kinds(sch, block)):
            continue  # the tile, and the partial results' last reductions
        if sch.get(block).name_hint in reduced:
            schedule_full_reduction(sch, block, facts)
        else:
            schedule_elementwise(sch, block, facts, _dtype_of(sch, block))
            if sch.get(block).name_hint in operands and sch.get(tile).kind == tirx.ForKind.PARALLEL:
                _parallel_outermost(sch, block)


def _parallel_outermost(sch: s_tir.Schedule, block) -> None:
    """An operand computed beside a parallel tile (several channel tiles would each compute it again): its
    outermost loop parallel however small, for ``share_parallel_launches`` to run it in the tile's launch, on every
    thread, rather than on one thread before it (PP-OCR's 1x2x96x32 -> 200 dynamic conv: 7.3-7.6 -> 7.0-7.2 us)."""
    loops = sch.get_loops(block)
    if loops and sch.get(loops[0]).kind != tirx.ForKind.PARALLEL and (_extent(sch, loops[0]) or 0) > 1:
        sch.parallel(loops[0])


def _compute_in_tile(sch: s_tir.Schedule, block, loop, facts: CPUFacts) -> None:
    """The elementwise ``block``, which writes an operand of the tile under ``loop``, computed in that tile:
    the input rows and columns the tile reads, vectorised along channels. Left where it is (then scheduled as an
    elementwise kernel) when ``compute_at`` refuses (its checks come before it changes anything)."""
    try:
        sch.compute_at(block, loop)
    except s_tir.ScheduleError:
        return
    inner = sch.get_loops(block)[-1]
    extent = _extent(sch, inner) or 0
    _vectorize_in(sch, inner, vector_width(extent, facts.lanes(_dtype_of(sch, block))) if extent else 1)


def _vectorize_in(sch: s_tir.Schedule, loop, lanes: int) -> None:
    """``loop`` vectorised in vectors of ``lanes`` (which divides its extent): whole, or its inner split; left
    scalar for one lane."""
    if lanes > 1:
        sch.vectorize(loop if lanes == _extent(sch, loop) else sch.split(loop, [None, lanes])[1])


# A map reduced to one value per channel (a squeeze-excite block's mean, the per-channel max|h| of a gated layer's
# dynamic scale) was one serial kernel reading the whole map, half of it from the other core's cache: the map's
# producer writes it in parallel. From ELEMENTWISE_PARALLEL_MIN elements on, each core reduces the chunk of rows
# or columns its producer wrote (cut as ``_split_by_columns`` cuts the producer) into partial results per
# channel, and the partials are reduced last. The PP-OCR classifier (three such reductions of 19968-38400
# elements in float, five in w8a8-dynamic), interleaved on a 2-core Zen 4: float 279 -> 272 us, w8a8-static 216
# -> 210, w8a8-dynamic 247 -> 241 (two runs alike; from 8192 elements on, the gain was lost).
# Reductions of one map that ``join_channel_reductions`` put in one kernel (a gated layer's mean and max|h|) share
# one pass over it, large or small: PP-OCR w8a8-dynamic 222 -> 217 us (eight pairs; 1x3x96x88 alone: 2.25 us
# for the two, 1.9 + 1.9 apart, on two threads).


def _is_channel_reduction(sch: s_tir.Schedule, block) -> bool:
    """Whether ``block`` reduces one input to one value per channel: its only spatial axis longer than 1 is the
    innermost (channels last), and it reads nothing but that input (a matmul's one row reads weights too)."""
    stmt = sch.get(block)
    kinds = _block_kinds(sch, block)
    if not _loops_match_iters(sch, block) or "S" not in kinds or "R" not in kinds or "S" in kinds[kinds.index("R") :]:
        return False  # spatial axes first, then the reduction
    spatial = _iters(stmt, tirx.IterVar.DataPar)
    extents = [iv.dom.extent for iv in spatial]
    if not all(isinstance(e, tirx.IntImm) for e in extents) or any(int(e) > 1 for e in extents[:-1]):
        return False
    inputs = {region.source for region in stmt.reads} - {region.source for region in stmt.writes}
    return len(inputs) == 1


def _is_shared_channel_reduction(sch: s_tir.Schedule, block) -> bool:
    """Whether ``block`` is a channel reduction (``_is_channel_reduction``) of ELEMENTWISE_PARALLEL_MIN elements
    or more, whose loops cut into chunks."""
    return (
        _is_channel_reduction(sch, block)
        and _work(sch, block) >= ELEMENTWISE_PARALLEL_MIN
        and _channel_chunks(sch, block)[1] > 1
    )


def _are_joined_channel_reductions(sch: s_tir.Schedule, blocks: list) -> bool:
    """Whether ``blocks`` (two or more) are channel reductions over the same domain, none reading another's result
    (``join_channel_reductions``: a map's mean and its per-channel max|h|; not a softmax's max and sum)."""
    if len(blocks) < 2 or not all(_is_channel_reduction(sch, block) for block in blocks):
        return False
    domains = {tuple(int(iv.dom.extent) for iv in sch.get(block).iter_vars) for block in blocks}
    names = {sch.get(block).name_hint for block in blocks}
    return len(domains) == 1 and not any(names & _upstream(sch, block) for block in blocks)


def _upstream(sch: s_tir.Schedule, block) -> set[str]:
    """The names of the blocks whose results ``block`` reads, directly or through others."""
    seen: set[str] = set()
    todo = [block]
    while todo:
        for producer in sch.get_producers(todo.pop()):
            name = sch.get(producer).name_hint
            if name not in seen:
                seen.add(name)
                todo.append(producer)
    return seen


def _channel_chunks(sch: s_tir.Schedule, block) -> tuple:
    """The reduction loop a per-channel reduction is cut along (its columns or its rows, as its producer was
    cut) and into how many chunks (1: it does not divide)."""
    reduction = [loop for loop in _loops_by_kind(sch, block)[1] if (_extent(sch, loop) or 1) > 1]
    if not reduction:
        return None, 1
    cut = reduction[0]
    if _split_by_columns(_extent(sch, reduction[-1]), _product(sch, reduction[:-1])):
        cut = reduction[-1]
    return cut, _pick(_extent(sch, cut) or 1, REDUCTION_CHUNKS)


def schedule_channel_reduction(sch: s_tir.Schedule, blocks: list, facts: CPUFacts) -> None:
    """Per-channel reductions of one map (``_is_channel_reduction``; several when ``join_channel_reductions``
    joined them), in one pass over it; see the note above. A map of ELEMENTWISE_PARALLEL_MIN elements or more is
    reduced in parallel chunks into partial results (``rfactor``), reduced last; a smaller one serially. The
    reductions' loops are merged: each element is loaded once for all of them, their accumulators (vectors of
    channels) side by side in registers, in groups of channels that fit. The last reductions of the partials and
    what follows them (a mean's division) run serially, vectorised over channels."""
    for other in _root_blocks(sch):
        if "R" not in _block_kinds(sch, other):
            schedule_elementwise(sch, other, facts, _dtype_of(sch, other))
    shared = all(_is_shared_channel_reduction(sch, block) for block in blocks)
    partials = blocks
    if shared:
        # partial[chunk, ..., channel]: the chunk loop is spatial, and outermost
        lasts = [sch.get(block).name_hint for block in blocks]
        partials = [sch.rfactor(_chunks_outermost(sch, block, *_channel_chunks(sch, block)), 0) for block in blocks]
    if len(partials) > 1:
        # the merged loops take the place of the last ones given: the first reduction's, before any block reading
        # a reduction's result
        sch.merge(*[sch.get_loops(partial)[-1] for partial in reversed(partials)])
    spatial, reduction = _loops_by_kind(sch, partials[0])
    lanes = vector_width(_extent(sch, spatial[-1]) or 1, facts.lanes(_dtype_of(sch, partials[0])))
    vectors, lane = sch.split(spatial[-1], [None, lanes])
    count = _extent(sch, vectors) or 0
    group = max((d for d in range(1, count + 1) if count % d == 0 and d * len(partials) <= facts.registers), default=0)
    if count and group < count:
        groups, vectors = sch.split(vectors, [None, group])
        sch.reorder(*spatial[:-1], groups, *reduction, vectors, lane)
    else:
        sch.reorder(*spatial[:-1], *reduction, vectors, lane)
    if shared:
        sch.parallel(spatial[0])
    sch.vectorize(lane)
    if group:
        sch.unroll(vectors)  # a register of partial results per vector of channels (200 channels: 25 on AVX-512)
    for partial in partials:
        init = sch.decompose_reduction(partial, reduction[0])
        sch.vectorize(sch.get_loops(init)[-1])
    if not shared:
        return
    for name in lasts:
        last = sch.get_sblock(name)
        spatial, reduction = _loops_by_kind(sch, last)
        vectors, lane = sch.split(spatial[-1], [None, lanes])
        sch.reorder(*spatial[:-1], vectors, *reduction, lane)
        sch.vectorize(lane)  # before the init is split off: vectorize refuses a loop under a reduction's own loops
        last_init = sch.decompose_reduction(last, reduction[0])
        sch.vectorize(sch.get_loops(last_init)[-1])
