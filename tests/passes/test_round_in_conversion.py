"""RoundInConversion: ``int(round(x))`` as one rounding conversion (``llvm.lrint``), with the same integers."""

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from edgetvm.kernels_schedules.round_in_conversion import round_in_conversion

HOST = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
ARM = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"})


@T.prim_func(s_tir=True)
def _clamped(a: T.Buffer((64,), "float32"), s: T.Buffer((), "float32"), q: T.Buffer((64,), "uint8")):
    T.func_attr({"tirx.noalias": True})
    for i in T.vectorized(64):
        with T.sblock("quantize"):
            vi = T.axis.spatial(64, i)
            q[vi] = T.Cast(
                "uint8",
                T.Cast(
                    "int16", T.Cast("int8", T.min(T.max(T.nearbyint(a[vi] * s[()]), T.float32(-127)), T.float32(127)))
                )
                + T.int16(128),
            )


@T.prim_func(s_tir=True)
def _clamped_rounding_in_conversion(a: T.Buffer((64,), "float32"), s: T.Buffer((), "float32"),
                                    q: T.Buffer((64,), "uint8")):  # fmt: skip
    T.func_attr({"tirx.noalias": True})
    for i in T.vectorized(64):
        with T.sblock("quantize"):
            vi = T.axis.spatial(64, i)
            q[vi] = T.Cast(
                "uint8",
                T.Cast(
                    "int16",
                    T.Cast(
                        "int8",
                        T.call_llvm_pure_intrin(
                            "int32", "llvm.lrint", T.min(T.max(a[vi] * s[()], T.float32(-127)), T.float32(127))
                        ),
                    ),
                )
                + T.int16(128),
            )


@T.prim_func(s_tir=True)
def _unclamped(a: T.Buffer((64,), "float32"), s: T.Buffer((), "float32"), q: T.Buffer((64,), "int8")):
    T.func_attr({"tirx.noalias": True})
    for i in T.vectorized(64):
        with T.sblock("quantize"):
            vi = T.axis.spatial(64, i)
            q[vi] = T.Cast("int8", T.nearbyint(a[vi] * s[()]))


@T.prim_func(s_tir=True)
def _truncating(a: T.Buffer((64,), "float32"), q: T.Buffer((64,), "int8")):
    for i in range(64):
        with T.sblock("cast"):
            vi = T.axis.spatial(64, i)
            q[vi] = T.Cast("int8", T.min(T.max(a[vi], T.float32(-127.5)), T.float32(127)))


def test_the_clamp_moves_before_the_rounding_conversion():
    tvm.ir.assert_structural_equal(
        round_in_conversion(_clamped).without_attr("global_symbol"),
        _clamped_rounding_in_conversion.without_attr("global_symbol"),
    )


def test_a_cast_without_rounding_is_left_alone():
    """A float -> int cast truncates; only a ``nearbyint`` under it (with integer clamps) rounds in the cast."""
    assert round_in_conversion(_truncating).same_as(_truncating)


@pytest.mark.parametrize("func", [_clamped, _unclamped], ids=["clamped", "unclamped"])
def test_the_same_integers_halves_to_even(func):
    # Exact halves (-126.5 ... 126.5 step 0.5 spans both parities), and beyond the clamp for the clamped one.
    x = np.concatenate([np.arange(-16, 16) + 0.5, np.linspace(-126.5, 126.5, 32)]).astype("float32")
    if func is _clamped:
        x[:4] = [300.0, -300.0, 127.49, -127.5]
    scale = np.array(1.0, "float32")
    outputs = []
    for f in (func, round_in_conversion(func)):
        lib = tvm.tirx.build(tvm.IRModule({"main": f}), target=HOST)
        out = tvm.runtime.tensor(np.zeros(64, str(f.params[-1].ty.dtype)))
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(scale), out)
        outputs.append(out.numpy())
    np.testing.assert_array_equal(outputs[1], outputs[0])
    expected = np.round(x)
    if func is _clamped:
        expected = np.clip(expected, -127, 127) + 128
    np.testing.assert_array_equal(outputs[0], expected.astype(outputs[0].dtype))


def test_the_conversion_stays_vectorised_on_aarch64():
    asm = tvm.tirx.build(tvm.IRModule({"main": round_in_conversion(_unclamped)}), target=ARM).inspect_source("asm")
    assert "fcvtzs\tv" in asm or "fcvtns\tv" in asm  # a vector conversion, not a scalar loop


def test_a_kernel_the_mutator_cannot_walk_is_left_as_it_is():
    """An optimising rewrite skips a kernel holding a node kind ``TIRMutator`` does not rebuild (a ``While``)."""
    loop = tvm.tirx.While(tvm.tirx.const(False, "bool"), tvm.tirx.Evaluate(tvm.tirx.const(0, "int32")))
    func = tvm.tirx.PrimFunc([], loop)
    assert round_in_conversion(func).same_as(func)
