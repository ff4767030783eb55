"""ReassociateRunTimeScales: ``(a * s) * p[c]`` as ``a * (s * p[c])`` where ``s`` is a run-time scalar."""

import numpy as np
import tvm
from tvm import tirx
from tvm.script import tirx as T

from edgetvm.kernels_schedules import pipeline as kernels_pipeline
from edgetvm.kernels_schedules.apply_schedules import ApplyCPUSchedules
from edgetvm.kernels_schedules.reassociate_run_time_scales import reassociate, rewrite_expr

HOST = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})


@T.prim_func(s_tir=True)
def _dequantize(acc: T.Buffer((8, 16), "int32"), s: T.Buffer((), "float32"), p: T.Buffer((1, 16), "float32"),
                out: T.Buffer((8, 16), "float32")):  # fmt: skip
    for i, c in T.grid(8, 16):
        with T.sblock("dequantize"):
            vi, vc = T.axis.remap("SS", [i, c])
            out[vi, vc] = T.Cast("float32", acc[vi, vc]) * (s[()] * T.float32(1.0 / 127)) * p[0, vc]


@T.prim_func(s_tir=True)
def _reassociated(acc: T.Buffer((8, 16), "int32"), s: T.Buffer((), "float32"), p: T.Buffer((1, 16), "float32"),
                  out: T.Buffer((8, 16), "float32")):  # fmt: skip
    for i, c in T.grid(8, 16):
        with T.sblock("dequantize"):
            vi, vc = T.axis.remap("SS", [i, c])
            out[vi, vc] = T.Cast("float32", acc[vi, vc]) * (s[()] * T.float32(1.0 / 127) * p[0, vc])


@T.prim_func(s_tir=True)
def _two_maps(a: T.Buffer((8, 16), "float32"), s: T.Buffer((), "float32"), b: T.Buffer((8, 16), "float32"),
              out: T.Buffer((8, 16), "float32")):  # fmt: skip
    for i, c in T.grid(8, 16):
        with T.sblock("product"):
            vi, vc = T.axis.remap("SS", [i, c])
            out[vi, vc] = a[vi, vc] * s[()] * b[vi, vc]


def test_the_scalar_scale_multiplies_the_channel_scale_first():
    tvm.ir.assert_structural_equal(
        reassociate(_dequantize).without_attr("global_symbol"), _reassociated.without_attr("global_symbol")
    )


def test_a_product_with_a_map_is_left_alone():
    """``s * b[i, c]`` would still be one multiply per element: nothing to share, so the rounding stays."""
    assert reassociate(_two_maps).same_as(_two_maps)


def test_integer_products_are_left_alone():
    acc = tvm.tirx.decl_buffer((16,), "int32", "acc")
    scale = tvm.tirx.decl_buffer((), "int32", "scale")
    zp = tvm.tirx.decl_buffer((16,), "int32", "zp")
    c = tirx.Var("c", "int32")
    expr = acc[c] * scale[()] * zp[c]
    assert rewrite_expr(expr).same_as(expr)


def test_same_numbers_within_an_ulp():
    rng = np.random.default_rng(0)
    args = [
        rng.integers(-20000, 20000, (8, 16)).astype("int32"),
        np.array(3.7, "float32"),
        rng.uniform(1e-3, 1e-2, (1, 16)).astype("float32"),
    ]
    outs = []
    for func in (_dequantize, reassociate(_dequantize)):
        lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=HOST)
        out = tvm.runtime.tensor(np.zeros((8, 16), "float32"))
        lib["main"](*(tvm.runtime.tensor(a) for a in args), out)
        outs.append(out.numpy())
    np.testing.assert_allclose(outs[1], outs[0], rtol=2.5e-7, atol=0)
    expected = args[0].astype(np.float64) * (3.7 / 127) * args[2]
    np.testing.assert_allclose(outs[1], expected, rtol=1e-6)


def _products_after_scalars(func: tirx.PrimFunc) -> int:
    """How many ``(a * scalar) * p[c]`` a function's stores still compute (what the pass rewrites)."""
    found = []

    def visit(stmt):
        if isinstance(stmt, tirx.BufferStore):
            if not rewrite_expr(stmt.value).same_as(stmt.value):
                found.append(stmt)
        for child in ("body", "block", "then_case", "else_case"):
            if hasattr(stmt, child) and getattr(stmt, child) is not None:
                visit(getattr(stmt, child))
        if isinstance(stmt, tirx.SeqStmt):
            for inner in stmt:
                visit(inner)

    visit(func.body)
    return len(found)


def test_a_dynamic_layer_s_kernel_multiplies_each_output_once_by_its_scales(fusion_stage):
    """The pipeline's dynamic 1x1 conv (200 output channels): its epilogue computed ``(acc * s) * w_scale[c]``,
    two multiplies per output; after the pass none is left."""
    with HOST:
        scheduled = ApplyCPUSchedules(HOST)(
            fusion_stage.run(fusion_stage.dynamic_layer(200), HOST, kernels_pipeline.fusion_passes(HOST))
        )
    (name,) = [gv.name_hint for gv in scheduled.get_global_vars() if gv.name_hint.endswith("_quantizing")]
    assert _products_after_scalars(scheduled[name]) == 1, scheduled[name].script()
    assert _products_after_scalars(reassociate(scheduled[name])) == 0
