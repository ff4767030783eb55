"""``tirx.nearbyint`` (every quantize's rounding) stays vector after ``VectorizeLoop`` once edgetvm registers it."""

import numpy as np
import tvm
from tvm.script import tirx as T

from edgetvm.kernels_schedules.pipeline import relax_pipeline
from edgetvm.kernels_schedules.vectorizable_intrinsics import VECTORIZABLE, register
from edgetvm.targets import resolve_target


@T.prim_func
def quantize(A: T.Buffer((64,), "float32"), B: T.Buffer((64,), "int8")):
    for i in T.vectorized(64):
        B[i] = T.Cast("int8", T.min(T.max(T.nearbyint(A[i] * T.float32(3.0)), T.float32(-127.0)), T.float32(127.0)))


def test_a_compile_registers_nearbyint_as_vectorizable():
    relax_pipeline(resolve_target("x86").tvm_target())
    assert tvm.ir.Op.get("tirx.nearbyint").get_attr("TVectorizable")
    register()  # idempotent: a second registration would raise
    assert VECTORIZABLE == ("tirx.nearbyint",)


def test_the_quantize_loop_stays_vector():
    register()
    lowered = tvm.tirx.transform.VectorizeLoop()(tvm.IRModule({"main": quantize})).script()
    assert "T.nearbyint(A[T.Ramp(0, 1, 64)]" in lowered and "for " not in lowered  # scalarized: a serial loop


def test_the_vector_rounding_is_half_to_even():
    register()
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3"})
    built = tvm.compile(tvm.IRModule({"main": quantize.with_attr("global_symbol", "main")}), target=target)
    values = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 100.0, -100.0, 1 / 6] * 8, dtype=np.float32) / 3
    out = tvm.runtime.empty((64,), "int8")
    built["main"](tvm.runtime.tensor(values), out)
    expected = np.clip(np.round(values * np.float32(3.0)), -127, 127).astype(np.int8)  # numpy rounds half to even
    np.testing.assert_array_equal(out.numpy(), expected)
    assert "vroundps" in built.mod.inspect_source("asm")
