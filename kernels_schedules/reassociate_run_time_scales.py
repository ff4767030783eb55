"""ReassociateRunTimeScales: ``(a * s) * p[c]`` becomes ``a * (s * p[c])`` in scheduled kernels, where ``s`` is a
run-time scalar and ``p`` a vector (a per-channel scale).

A dynamic layer's epilogue dequantizes its accumulator with the input's run-time scale, then with the weights'
per-channel scales: ``float(acc - zp[c]) * (max|x| / 127) * w_scale[c]``. Float multiplication is not associative,
so LLVM multiplies every output by both. Written ``float(acc - zp[c]) * ((max|x| / 127) * w_scale[c])`` the product
depends on the channel only: a tile's unrolled pixel rows share it, and it costs a multiply per channel vector of
the tile rather than per output vector. A static layer has the product folded into one constant already.
PP-OCR's 1x2x96x32 -> 200 conv in ``w8a8-dynamic`` (alone, its float input quantized in the same kernel, two
threads of a Zen 4, interleaved): 7.24 -> 6.7-6.8 us, as fast as without the second multiply at all. The product
rounds once before the multiply rather than after it: results move by an ulp at most.

Every expression of a kernel is looked at (``tir_nodes.TIRMutator``), a ``Call``'s arguments too (a requantize's
rounding); a kernel holding a node kind the mutator does not rebuild is left as it is.
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.ir import expr as ir_expr

from edgetvm.kernels_schedules.tir_nodes import TIRMutator, rewrite_prim_funcs

_BINARY = (tirx.Add, tirx.Sub, tirx.Mul, tirx.Div, tirx.Min, tirx.Max)


def _is_scalar(expr) -> bool:
    """Whether ``expr`` is the same for every element: constants and loads of 0-d buffers, combined."""
    if isinstance(expr, (tirx.FloatImm, tirx.IntImm)):
        return True
    if isinstance(expr, ir_expr.TensorLoad):
        return len(expr.indices) == 0
    if isinstance(expr, tirx.Cast):
        return _is_scalar(expr.value)
    if isinstance(expr, _BINARY):
        return _is_scalar(expr.a) and _is_scalar(expr.b)
    return False


def _is_vector_load(expr) -> bool:
    """A load from a buffer with at most one axis longer than 1 (one scale per channel, or per row)."""
    if not isinstance(expr, ir_expr.TensorLoad):
        return False
    return sum(1 for extent in expr.source.shape if not (isinstance(extent, tirx.IntImm) and int(extent) == 1)) <= 1


def _is_float(expr) -> bool:
    return str(expr.ty.dtype).startswith("float")


class _Reassociate(TIRMutator):
    def rewrite(self, e):
        if (
            isinstance(e, tirx.Mul)
            and _is_float(e)
            and isinstance(e.a, tirx.Mul)
            and _is_scalar(e.a.b)
            and not _is_scalar(e.a.a)
            and _is_vector_load(e.b)
        ):
            return tirx.Mul(e.a.a, tirx.Mul(e.a.b, e.b))
        return e


def rewrite_expr(expr):
    """``expr`` with every ``(a * s) * load`` (``s`` scalar, ``a`` not) as ``a * (s * load)``."""
    return _Reassociate().expr(expr)


def reassociate(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with its run-time scalar scales multiplied into the loads they scale (unchanged if none)."""
    return _Reassociate().prim_func(func)


@tvm.transform.module_pass(opt_level=0, name="ReassociateRunTimeScales")
class ReassociateRunTimeScales:
    """Every PrimFunc's ``(a * s) * load`` as ``a * (s * load)`` (``reassociate``)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return rewrite_prim_funcs(mod, reassociate)
