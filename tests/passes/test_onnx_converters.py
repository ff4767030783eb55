"""edgetvm's overrides of TVM's ONNX converters (pipeline/onnx_converters.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from edgetvm.pipeline.ingest import load_model


def _clip_model(tmp_path, lo, hi, opset=13):
    inputs = ["x", "lo" if lo is not None else "", "hi" if hi is not None else ""]
    while inputs[-1] == "":
        inputs.pop()
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", lo), ("hi", hi)) if v is not None]
    graph = helper.make_graph(
        [helper.make_node("Clip", inputs, ["y"])],
        "clip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])],
        inits,
    )
    path = tmp_path / "clip.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


def _ops(mod) -> set[str]:
    names = set()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            names.add(expr.op.name)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return names


@pytest.mark.parametrize("lo,hi", [(0.0, 6.0), (None, 1.5), (-1.0, None), (float("nan"), 2.0)])
def test_clip_becomes_max_min_and_matches_onnxruntime(tmp_path, lo, hi):
    path = _clip_model(tmp_path, lo, hi)
    imported = load_model(path)
    ops = _ops(imported.mod)
    assert "relax.call_tir" not in ops  # what TVM's own converter emits, opaque to layout conversion
    x = np.random.default_rng(0).uniform(-8, 8, (1, 4, 5, 5)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    target = tvm.target.Target({"kind": "llvm"})
    vm = relax.VirtualMachine(tvm.compile(imported.mod, target), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), expected)
