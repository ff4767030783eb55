"""Pass: the column unfold of ``UnfoldNarrowConv`` as one kernel that copies a row's runs.

``UnfoldNarrowConv`` writes a narrow conv's input ``X'[n, h, ow, kw * C + c] = x_padded[n, h, ow * SW + kw, c]``
with Relax ops any layout conversion understands: a pad of the columns, one strided slice per kernel column, a
concat over channels and a pad to an even channel count. Fused and lowered, that is one ``if_then_else`` per
kernel column and per channel lane: each output vector is assembled lane by lane (BlazeFace's 1x128x64x16 took
22 us, 38 with its quantize fused in, against 6 to 8 for the kernel below).

In NHWC the ``KW * C`` values of one output column are one contiguous run of the row, ``x[n, h, ow * SW - left
+ j // C, j % C]`` for ``j < KW * C``: this pass replaces the ops with that single indexed copy (a TE kernel),
zero where the column falls in the padding or ``j`` in the padded channels. The kernel is opaque to FuseOps: a
quantize fused in ran lane by lane with the loads, slower than on its own. Matched after ``ConvertLayout``: the
pattern ``UnfoldNarrowConv`` writes, with every intermediate used once, in NHWC, or in NCHW followed by the
transpose ``ConvertLayout`` leaves before the conv (an ONNX model's first layer): that becomes a transpose of the
smaller input and the NHWC kernel. Anything else is left as it is.

The unfolded copy holds each input value KW / SW times (2.5 for BlazeFace). In an int8 build the quantize that
follows it (scale, round, clip, cast, and on VNNI the shift to uint8), and in ``w8a8-dynamic`` the ``max|x|``
its scale comes from, are elementwise with scalar operands: they run on the input instead, and the kernel copies
their int8 result, filling the padding with what the ops make of the zero (128 for uint8) — the same values.
The max reads the input when every input column is in some window (its padding adds nothing when the chain ends
in ``maximum(., eps)``, else the fill joins the max). Runs after ``Int8ConvLayout``, whose uint8 shift it moves too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from edgetvm.kernels_schedules.cpu_rules import ELEMENTWISE_PARALLEL_MIN
from edgetvm.pipeline.passes.bindings import BoundValues, number, op_name, static_shape


@dataclass(frozen=True)
class ColumnUnfold:
    """What one unfold reads and writes: ``x``'s columns from ``-left``, ``kernel_width`` of them per output column
    at ``stride``, ``output_width`` output columns of ``channels`` (``kernel_width * C`` and filled channels)."""

    left: int
    kernel_width: int
    stride: int
    output_width: int
    channels: int

    def coverage(self, width: int, channels: int) -> tuple[bool, bool]:
        """``(every column of x is read, some lane is filled)`` for an input ``width`` x ``channels``."""
        columns = {
            ox * self.stride + kw - self.left for ox in range(self.output_width) for kw in range(self.kernel_width)
        }
        inside = columns & set(range(width))
        return len(inside) == width, len(inside) < len(columns) or self.channels > self.kernel_width * channels


def unfold_columns(x, unfold: ColumnUnfold, fill: float = 0.0):
    """TE: ``x[N, H, W, C]`` -> ``[N, H, output_width, channels]``: per output column ``ox``, the run of
    ``kernel_width * C`` values from column ``ox * stride - left`` of its row (``fill`` in the padding), then
    ``fill``."""
    from tvm import te, tirx

    n, height, width, c = (int(d) for d in x.shape)
    runs = unfold.kernel_width * c

    filler = tirx.const(int(fill) if "int" in str(x.dtype) else fill, x.dtype)

    def value(b, y, ox, j):
        # The column test varies with ox (partitioned away inside the row, see ``scheduled_unfold``); the channel
        # test only with the lane: a select, which stays a vector, where an if_then_else would scalarise the loop.
        column = ox * unfold.stride + tirx.floordiv(j, c) - unfold.left
        inside = tirx.if_then_else(tirx.all(column >= 0, column < width), x[b, y, column, tirx.floormod(j, c)], filler)
        return tirx.Select(j < runs, inside, filler)

    # int32 extents, as ``x``'s: LoopPartition leaves int64 loops whole. The kernel fuses with nothing, so its
    # buffers need not match LegalizeOps' int64 ones.
    return te.compute((n, height, unfold.output_width, unfold.channels), value, name="unfold_columns")


def scheduled_unfold(x, unfold: ColumnUnfold, fill: float) -> tvm.tirx.PrimFunc:
    """The kernel, scheduled: rows in parallel (from ``ELEMENTWISE_PARALLEL_MIN`` values), a vector per output
    column, and the column loop partitioned where every lane's column is inside the row (BlazeFace's: columns
    1-61 of 64), so those copy a contiguous run with one vector load. uint8: 6.5 -> 2.4 us, float 5.9 -> 4.6."""
    from tvm import s_tir

    out = unfold_columns(x, unfold, fill)
    sch = s_tir.Schedule(tvm.te.create_prim_func([x, out]))
    batch, rows, columns, lanes = sch.get_loops(sch.get_sblock("unfold_columns"))
    fused = sch.fuse(batch, rows)
    if np.prod([int(d) for d in out.shape]) >= ELEMENTWISE_PARALLEL_MIN:
        sch.parallel(fused)
    sch.annotate(columns, "pragma_loop_partition_hint", 1)
    sch.vectorize(lanes)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


@dataclass(frozen=True)
class _Moved:
    """An unfold whose consumer chain (elementwise, scalar operands) runs before it, on ``x``: ``steps`` are the
    chain's calls with the argument index of the chained tensor; ``fill`` what the padding becomes through them.
    ``reduce``: the chain ends in a max over every axis, which then reads ``x``'s values (and ``fill``)."""

    x: relax.Expr
    unfold: ColumnUnfold
    nchw: bool
    steps: tuple[tuple[relax.Call, int], ...]
    fill: float
    reduce: relax.Call | None = None
    filled: bool = False  # some lane of the unfold is fill: the max takes it too


@mutator
class _Unfolder(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, func: relax.Function):
        super().__init__(mod)
        bound = BoundValues(func)
        consumers: dict[relax.Var, list[relax.Var]] = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                for var in relax.analysis.free_vars(binding.value):
                    consumers.setdefault(var, []).append(binding.var)
        self._unfolds: dict[relax.Call, tuple[relax.Expr, ColumnUnfold, bool]] = {}
        self._moved: dict[relax.Call, _Moved] = {}  # the value of a chain's last binding (or its max) -> the chain
        self._inputs: dict[relax.Expr, relax.Expr] = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                found = _match(bound, binding.value)
                if found is None:
                    continue
                self._unfolds[binding.value] = found
                if op_name(binding.value) == "relax.nn.pad":  # the concat it pads is not an unfold of its own
                    self._unfolds.pop(bound.of(binding.value.args[0]), None)
                for consumer in consumers.get(binding.var, []):
                    moved = _chain(bound, consumers, binding.var, consumer, found)
                    if moved is not None:
                        self._moved[moved.steps[-1][0] if moved.reduce is None else moved.reduce] = moved

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        if call in self._moved:
            moved = self._moved[call]
            data = self._input(moved.x, moved.nchw)
            for step, index in moved.steps:
                args = [data if i == index else self.visit_expr(arg) for i, arg in enumerate(step.args)]
                data = self.builder_.emit(relax.Call(step.op, args, step.attrs))
            if moved.reduce is not None:
                attrs = moved.reduce.attrs
                data = relax.op.max(data, attrs.axis, attrs.keepdims)
                return relax.op.maximum(data, relax.const(moved.fill, moved.reduce.ty.dtype)) if moved.filled else data
            return self._unfold(data, moved.unfold, moved.fill, call.ty)
        if call in self._unfolds:
            x, unfold, nchw = self._unfolds[call]
            return self._unfold(self._input(x, nchw), unfold, 0.0, call.ty)
        return super().visit_call_(call)

    def _input(self, x: relax.Expr, nchw: bool) -> relax.Expr:
        """``x`` as the kernel reads it: NHWC (``permute_dims`` emitted once for an NCHW input)."""
        if x not in self._inputs:
            data = self.visit_expr(x)
            if nchw:  # the input's transpose: a kernel over the C x W values, not the unfold's (KW * C) x (W / SW)
                data = self.builder_.emit(relax.op.permute_dims(data, [0, 2, 3, 1]))
            self._inputs[x] = data
        return self._inputs[x]

    def _unfold(self, data: relax.Expr, unfold: ColumnUnfold, fill: float, ty) -> relax.Expr:
        placeholder = tvm.te.placeholder([int(d) for d in static_shape(data)], data.ty.dtype)  # int32 extents
        func = scheduled_unfold(placeholder, unfold, fill)
        # Opaque: an epilogue fused in is computed lane by lane with the loads (BlazeFace's quantize: 70 us against
        # 6 on its own), a producer once per run it appears in.
        gvar = self.builder_.add_func(func.with_attr("op_pattern", 8), "unfold_columns")
        return relax.call_tir(gvar, [data], ty)


def _match(bound: BoundValues, call: relax.Call) -> tuple[relax.Expr, ColumnUnfold, bool] | None:
    """``(x, unfold, nchw)`` when ``call`` ends an unfold: in NHWC its channel pad (or its concat, where no pad
    follows); in NCHW the ``permute_dims`` to NHWC that ``ConvertLayout`` puts before the conv (``x`` NCHW)."""
    w_axis, c_axis = 2, 3
    if op_name(call) == "relax.permute_dims" and [int(a) for a in call.attrs.axes or []] == [0, 2, 3, 1]:
        w_axis, c_axis = 3, 1
        call = bound.of(call.args[0])
    channels = None
    if op_name(call) == "relax.nn.pad":
        widths = [int(w) for w in call.attrs.pad_width]
        if not _zero_pad(call) or any(w for i, w in enumerate(widths) if i != 2 * c_axis + 1):
            return None
        shape = static_shape(call)
        channels = shape[c_axis] if shape else None
        call = bound.of(call.args[0])
    if op_name(call) != "relax.concat" or int(call.attrs.axis) != c_axis or not isinstance(call.args[0], relax.Tuple):
        return None
    shape = static_shape(call)
    windows = [_column_slice(bound.of(field), w_axis) for field in call.args[0].fields]
    if shape is None or len(shape) != 4 or any(w is None for w in windows):
        return None
    if len({data for data, _, _ in windows}) != 1 or len({step for *_, step in windows}) != 1:
        return None
    if [begin for _, begin, _ in windows] != list(range(len(windows))):
        return None
    padded = windows[0][0]
    x, left = padded, 0
    pad = bound.of(padded, uses=len(windows))
    if op_name(pad) == "relax.nn.pad" and _zero_pad(pad):
        widths = [int(w) for w in pad.attrs.pad_width]
        if any(w for i, w in enumerate(widths) if i not in (2 * w_axis, 2 * w_axis + 1)):
            return None
        x, left = pad.args[0], widths[2 * w_axis]
    elif bound.uses.get(padded, 0) != len(windows):
        return None
    x_shape = static_shape(x)
    if x_shape is None or len(x_shape) != 4 or shape[c_axis] != len(windows) * x_shape[c_axis]:
        return None
    unfold = ColumnUnfold(left, len(windows), windows[0][2], shape[w_axis], channels or shape[c_axis])
    return x, unfold, c_axis == 1


# Elementwise ops that can run before the unfold: on the input's values they compute what they computed on the
# unfolded copies; the padding's value goes through them too (``_step``).
_UNARY = {"relax.round": np.round, "relax.abs": np.abs, "relax.nn.relu": lambda v: np.maximum(v, 0)}
_BINARY = {
    "relax.add": np.add,
    "relax.subtract": np.subtract,
    "relax.multiply": np.multiply,
    "relax.divide": np.divide,
    "relax.maximum": np.maximum,
    "relax.minimum": np.minimum,
}
_COMMUTATIVE = ("relax.add", "relax.multiply", "relax.maximum", "relax.minimum")


def _chain(bound: BoundValues, consumers, unfolded: relax.Var, consumer: relax.Var, found) -> _Moved | None:
    """The chain of elementwise bindings from ``consumer`` on that can run before the unfold ``unfolded``."""
    x, unfold, nchw = found
    x_shape = static_shape(x)
    width, channels = (x_shape[3], x_shape[1]) if nchw else (x_shape[2], x_shape[3])
    if np.prod(static_shape(unfolded)) <= np.prod(x_shape):
        return None  # the unfold drops columns: the ops would do more work before it
    steps, fill, var, current = [], 0.0, unfolded, consumer
    while (step := _step(bound.of(current, uses=None), var, fill)) is not None:
        steps.append((bound.of(current, uses=None), step[0]))
        fill, var = step[1], current
        if bound.uses.get(current, 0) != 1 or len(consumers.get(current, [])) != 1:
            break
        current = consumers[current][0]
    if not steps:
        return None
    covered, filled = unfold.coverage(width, channels)
    after = consumers.get(var, [])
    reduce = bound.of(after[0], uses=None) if len(after) == 1 else None
    if covered and bound.uses.get(var, 0) == 1 and _max_over_all_axes(reduce):
        floored = _is_floor(steps[-1][0], fill)  # max(maximum(|x|, eps)) is eps or more: eps is no new candidate
        return _Moved(x, unfold, nchw, tuple(steps), fill, reduce, filled and not floored)
    return _Moved(x, unfold, nchw, tuple(steps), fill)


def _step(value: relax.Expr | None, data: relax.Var, fill: float) -> tuple[int, float] | None:
    """``(index of data among value's arguments, the fill after value)`` when ``value`` is an elementwise op of
    ``data`` and scalars, else None."""
    name = op_name(value)
    if name is None or static_shape(value) != static_shape(data):
        return None
    current = np.array(fill, dtype=str(data.ty.dtype))
    if name == "relax.astype" or name in _UNARY:
        if not value.args[0].same_as(data):
            return None
        result = _finite(current.astype(str(value.ty.dtype)) if name == "relax.astype" else _UNARY[name](current))
        return None if result is None else (0, result)
    if name not in _BINARY:
        return None
    for index in (0, 1) if name in _COMMUTATIVE else (0,):
        other = value.args[1 - index]
        if not value.args[index].same_as(data) or (static_shape(other) is None or np.prod(static_shape(other)) != 1):
            continue
        if isinstance(other, tvm.ir.GenericConst):
            constant = other.value.numpy().reshape(())
            operands = (current, constant) if index == 0 else (constant, current)
            result = _finite(_BINARY[name](*operands))
            return None if result is None else (index, result)
        if name in ("relax.multiply", "relax.divide") and fill == 0.0:  # a runtime scale: 0 stays 0
            return index, 0.0
    return None


def _is_floor(call: relax.Call, fill: float) -> bool:
    """``call`` is ``maximum(v, fill)`` (its result never below ``fill``)."""
    if op_name(call) != "relax.maximum":
        return False
    return any(isinstance(a, tvm.ir.GenericConst) and float(a.value.numpy().reshape(())) == fill for a in call.args)


def _finite(value: np.ndarray) -> float | None:
    return float(value) if np.isfinite(value) else None


def _max_over_all_axes(value: relax.Expr | None) -> bool:
    if op_name(value) != "relax.max":
        return False
    axes = value.attrs.axis
    rank = len(static_shape(value.args[0]) or ())
    return axes is None or sorted(int(a) % rank for a in axes) == list(range(rank))


def _column_slice(value: relax.Expr | None, w_axis: int) -> tuple[relax.Expr, int, int] | None:
    """``(data, begin, stride)`` of a strided slice over the column axis alone, else None."""
    if op_name(value) != "relax.strided_slice":
        return None
    axes, begin, _end, strides = ([number(v) for v in arg.fields] for arg in value.args[1:5])
    if axes != [w_axis] or len(begin) != 1 or len(strides) != 1:
        return None
    return value.args[0], int(begin[0]), int(strides[0])


def _zero_pad(pad: relax.Call) -> bool:
    return str(pad.attrs.pad_mode) == "constant" and float(pad.attrs.pad_value) == 0.0


@tvm.transform.module_pass(opt_level=0, name="UnfoldColumnsKernel")
class UnfoldColumnsKernel:
    """Replace each column unfold in ``main`` with one ``unfold_columns`` kernel, the scalar elementwise ops after
    it (and a max over them) moved before it onto the input (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        unfolder = _Unfolder(mod, mod["main"])
        unfolder.builder_.update_func(mod.get_global_var("main"), unfolder.visit_expr(mod["main"]))
        return relax.transform.DeadCodeElimination(["main"])(unfolder.builder_.get())
