"""Models that arrive quantized: recognise them, turn their QDQ pairs into int8 compute, describe the result.

Ingest calls this for every ONNX model that carries quantization ops, so that whatever consumes an
``ImportedModel`` (compile, bench, compare) sees the int8 module, and ``manifest.json`` records
``quantization: {"source": "onnx-qdq" | "onnx-qoperator", ...}``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import tvm
from tvm import relax

from edgetvm.errors import ModelError, last_line
from edgetvm.pipeline import onnx_qoperators

log = logging.getLogger(__name__)

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# What onnxruntime's quantize_dynamic (integer ops) and quantize_static(QOperator) write, besides Q/DQ.
QOPERATOR_OPS = onnx_qoperators.MICROSOFT_OPS | {
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
}
LAYER_OPS = ("relax.nn.conv2d", "relax.matmul")


def quantization_source(model) -> str | None:
    """``onnx-qoperator``, ``onnx-qdq`` or None (a float model), from the ONNX graph's op types."""
    ops = {node.op_type for node in model.graph.node}
    if ops & QOPERATOR_OPS:
        return "onnx-qoperator"
    if ops & QDQ_OPS:
        return "onnx-qdq"
    return None


def to_int8(mod: tvm.IRModule, path: Path) -> tvm.IRModule:
    """``QDQToInt8`` on an imported module.

    Raises
    ------
    ModelError
        When the pass fails on the model's quantization ops.
    """
    from edgetvm.pipeline.passes import QDQToInt8

    try:
        return QDQToInt8()(mod)
    except Exception as err:  # TVM raises TVMError and friends from inside the pattern rewriter
        raise ModelError(f"model {path}: its quantize/dequantize ops do not convert to int8: {last_line(err)}") from err


def describe(mod: tvm.IRModule, source: str) -> dict:
    """The manifest's ``quantization`` entry: the source and the conv2d / matmul layers by operand dtype."""
    counts = {"integer_layers": 0, "float_layers": 0}

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in LAYER_OPS:
            dtype = str(expr.args[0].ty.dtype)
            counts["integer_layers" if dtype.startswith(("int", "uint")) else "float_layers"] += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    if counts["float_layers"]:
        log.warning(
            "%d conv2d/matmul layer(s) of the quantized model stay in float (left in float by its quantizer, a "
            "weight computed in the graph, or scales the int8 rewrite does not take); %d compute on integers",
            counts["float_layers"],
            counts["integer_layers"],
        )
    return {"source": source, **counts}
