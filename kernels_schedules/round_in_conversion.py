"""RoundInConversion: ``int(round(x))`` in scheduled kernels as one conversion that rounds (``llvm.lrint``).

Every quantize and requantize rounds a float to the nearest integer, half to even (``relax.round``:
``tirx.nearbyint``), then converts it to an integer type: on x86 a rounding (``vrndscaleps``) then a truncating
conversion (``vcvttps2dq``). ``llvm.lrint`` rounds by the current rounding mode, round to nearest even as
``nearbyint`` does, in the conversion itself (``vcvtps2dq``; on aarch64 ``frintx`` + ``fcvtzs`` as before): one
vector instruction a quantized value fewer. A clamp between the rounding and the conversion (a static quantize's
``min(max(round(x), -127), 127)``) moves before it: its bounds are integers, so clamping then rounding gives the
same integer. Results are the same bit for bit.

Matched: a cast of a float32 value to int8, uint8, int16 or int32 whose operand is ``nearbyint(x)``, possibly under
``min`` / ``max`` with integer constants.
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.ir import expr as ir_expr
from tvm.ir.prim import expr as prim

from edgetvm.kernels_schedules.tir_nodes import TIRMutator, rewrite_prim_funcs

LRINT = "llvm.lrint"
_INTEGERS = ("int8", "uint8", "int16", "int32")
_NEARBYINT = "tirx.nearbyint"


def _integer_bound(e) -> bool:
    return isinstance(e, prim.FloatImm) and float(e.value).is_integer()


def _unclamped(e) -> tuple[list[tuple[type, object]], object]:
    """The ``min`` / ``max`` with integer constants around ``e``'s core, outermost first, and the core."""
    clamps = []
    while isinstance(e, (prim.Min, prim.Max)):
        if _integer_bound(e.b):
            clamps.append((type(e), e.b))
            e = e.a
        elif _integer_bound(e.a):
            clamps.append((type(e), e.a))
            e = e.b
        else:
            break
    return clamps, e


class _RoundInConversion(TIRMutator):
    def rewrite(self, e):
        if not isinstance(e, prim.Cast) or str(e.ty.dtype) not in _INTEGERS:
            return e
        clamps, core = _unclamped(e.value)
        if not (isinstance(core, ir_expr.Call) and getattr(core.op, "name", "") == _NEARBYINT):
            return e
        value = core.args[0]
        if str(value.ty.dtype) != "float32":
            return e
        for kind, bound in reversed(clamps):
            value = kind(value, bound)
        rounded = tirx.call_llvm_pure_intrin("int32", LRINT, value)
        return rounded if str(e.ty.dtype) == "int32" else tirx.Cast(str(e.ty.dtype), rounded)


def round_in_conversion(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with each ``int(round(x))`` as ``int(lrint(x))`` (unchanged if none)."""
    return _RoundInConversion().prim_func(func)


@tvm.transform.module_pass(opt_level=0, name="RoundInConversion")
class RoundInConversion:
    """Every PrimFunc's rounding conversions as one ``lrint`` (``round_in_conversion``)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return rewrite_prim_funcs(mod, round_in_conversion)
