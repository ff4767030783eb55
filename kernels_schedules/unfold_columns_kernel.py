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
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from edgetvm.pipeline.passes.bindings import BoundValues, number, op_name, static_shape


@dataclass(frozen=True)
class ColumnUnfold:
    """What one unfold reads and writes: ``x``'s columns from ``-left``, ``kernel_width`` of them per output column
    at ``stride``, ``output_width`` output columns of ``channels`` (``kernel_width * C`` and zero channels)."""

    left: int
    kernel_width: int
    stride: int
    output_width: int
    channels: int


def unfold_columns(x, unfold: ColumnUnfold):
    """TE: ``x[N, H, W, C]`` -> ``[N, H, output_width, channels]``: per output column ``ox``, the run of
    ``kernel_width * C`` values from column ``ox * stride - left`` of its row (zero in the padding), then zeros."""
    from tvm import te, tirx

    n, height, width, c = (int(d) for d in x.shape)
    runs = unfold.kernel_width * c

    def value(b, y, ox, j):
        column = ox * unfold.stride + tirx.floordiv(j, c) - unfold.left
        inside = tirx.all(j < runs, column >= 0, column < width)
        return tirx.if_then_else(inside, x[b, y, column, tirx.floormod(j, c)], tirx.const(0, x.dtype))

    shape = [tirx.const(d, "int64") for d in (n, height, unfold.output_width, unfold.channels)]  # as LegalizeOps
    return te.compute(shape, value, name="unfold_columns")


@mutator
class _Unfolder(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, func: relax.Function):
        super().__init__(mod)
        bound = BoundValues(func)
        self._unfolds: dict[relax.Call, tuple[relax.Expr, ColumnUnfold, bool]] = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                found = _match(bound, binding.value)
                if found is not None:
                    self._unfolds[binding.value] = found
                    if op_name(binding.value) == "relax.nn.pad":  # the concat it pads is not an unfold of its own
                        self._unfolds.pop(bound.of(binding.value.args[0]), None)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        if call not in self._unfolds:
            return super().visit_call_(call)
        x, unfold, nchw = self._unfolds[call]
        x = self.visit_expr(x)
        if nchw:  # the input's transpose: a kernel over the C x W values, not the unfold's (KW * C) x (W / SW)
            x = self.builder_.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
        # int64 extents, as LegalizeOps writes them: FuseTIR requires a tensor's buffers to agree exactly.
        placeholder = tvm.te.placeholder([tvm.tirx.const(d, "int64") for d in static_shape(x)], x.ty.dtype)
        func = tvm.te.create_prim_func([placeholder, unfold_columns(placeholder, unfold)])
        # Opaque: an epilogue fused in is computed lane by lane with the loads (BlazeFace's quantize: 70 us against
        # 6 on its own), a producer once per run it appears in.
        gvar = self.builder_.add_func(func.with_attr("op_pattern", 8), "unfold_columns")
        return relax.call_tir(gvar, [x], call.ty)


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
    """Replace each NHWC column unfold in ``main`` with one ``unfold_columns`` kernel (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        unfolder = _Unfolder(mod, mod["main"])
        unfolder.builder_.update_func(mod.get_global_var("main"), unfolder.visit_expr(mod["main"]))
        return relax.transform.DeadCodeElimination(["main"])(unfolder.builder_.get())
