"""Make an ONNX graph's shapes static before TVM imports it.

TVM's ONNX importer turns a ``Shape -> Slice -> Concat -> Reshape`` chain into a tensor rather than a shape
when the graph input has a symbolic (or ``-1``) batch dimension, and then fails in ``Reshape``. Many exported
CNNs (PaddleOCR's classifier among them) compute shapes that way. Once the input shapes are fixed, every such
chain is a constant: this module writes the fixed shapes into the graph, runs ONNX shape inference, and
folds the integer shape computations into constants with ONNX's reference evaluator.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgetvm.errors import ModelError

log = logging.getLogger(__name__)

# Ops whose integer results are shape arithmetic; folding them never touches weights or quantized data.
_SHAPE_OPS = frozenset(
    "Shape Size Slice Concat Gather Unsqueeze Squeeze Cast Add Sub Mul Div Floor Ceil Reshape Range Equal Where "
    "ConstantOfShape ReduceProd Max Min Identity Expand Not Less Greater Tile Transpose Mod Abs Neg".split()
)
_MAX_FOLD_ELEMENTS = 4096


def graph_input_names(model: onnx.ModelProto) -> list[str]:
    """Names of the real inputs: graph inputs that are not initializers."""
    initializers = {init.name for init in model.graph.initializer}
    return [inp.name for inp in model.graph.input if inp.name not in initializers]


def declared_shape(value_info: onnx.ValueInfoProto) -> list[int | str]:
    """The declared shape, with a symbol (or ``"?"``) for every dimension that is not a positive integer."""
    dims: list[int | str] = []
    for dim in value_info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(dim.dim_value)
        else:
            dims.append(dim.dim_param or "?")
    return dims


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """Write static input shapes into the graph, checking them against the declared ones.

    Raises
    ------
    ModelError
        When a shape names an unknown input, disagrees with a static dimension, or an input stays dynamic.
    """
    inputs = {inp.name: inp for inp in model.graph.input if inp.name in graph_input_names(model)}
    unknown = set(shapes) - set(inputs)
    if unknown:
        raise ModelError(
            f"--input-shape names unknown input(s) {sorted(unknown)}; the model's inputs are {sorted(inputs)}"
        )
    for name, inp in inputs.items():
        declared = declared_shape(inp)
        wanted = shapes.get(name)
        if wanted is None:
            dynamic = [i for i, d in enumerate(declared) if isinstance(d, str)]
            if dynamic:
                example = "x".join(str(d) if isinstance(d, int) else "N" for d in declared)
                raise ModelError(
                    f"input {name!r} has dynamic dimension(s) {declared}: fix them with --input-shape {name}={example}"
                )
            continue
        fits = len(wanted) == len(declared) and all(
            not isinstance(d, int) or d == w for d, w in zip(declared, wanted, strict=True)
        )
        if not fits:
            shape = "x".join(map(str, wanted))
            raise ModelError(f"--input-shape {name}={shape} does not fit input {name!r}, declared as {declared}")
        for dim, value in zip(inp.type.tensor_type.shape.dim, wanted, strict=True):
            dim.Clear()
            dim.dim_value = value
    return model


def _constant_node(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name=name))


def fold_shape_computations(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace ``Shape`` of statically shaped tensors and the integer arithmetic on them by constants."""
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    static_shapes: dict[str, list[int]] = {}
    for info in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = declared_shape(info)
        if info.type.HasField("tensor_type") and all(isinstance(d, int) for d in dims):
            static_shapes[info.name] = dims  # type: ignore[assignment]
    known: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 11)
    nodes: list[onnx.NodeProto] = []
    folded = 0
    for node in model.graph.node:
        value = _try_fold(node, known, static_shapes, opset)
        if value is None:
            nodes.append(node)
            continue
        for name, array in zip(node.output, value, strict=True):
            known[name] = array
            nodes.append(_constant_node(name, array))
        folded += 1
    if folded:
        log.info("folded %d shape computation(s) into constants", folded)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return model


def _try_fold(
    node: onnx.NodeProto, known: dict[str, np.ndarray], static_shapes: dict[str, list[int]], opset: int
) -> list[np.ndarray] | None:
    if node.op_type == "Constant" and len(node.output) == 1:
        attr = {a.name: a for a in node.attribute}
        if "value" in attr:
            known[node.output[0]] = numpy_helper.to_array(attr["value"].t)
        return None
    if node.domain not in ("", "ai.onnx") or node.op_type not in _SHAPE_OPS:
        return None
    if node.op_type == "Shape":
        shape = static_shapes.get(node.input[0])
        if shape is None:
            return None
        start = next((a.i for a in node.attribute if a.name == "start"), 0)
        end = next((a.i for a in node.attribute if a.name == "end"), len(shape))
        return [np.asarray(shape[start:end], dtype=np.int64)]
    inputs = [name for name in node.input if name]
    if not inputs or any(name not in known for name in inputs):
        return None
    if not all(_small_integer(known[name]) for name in inputs):
        return None
    try:
        values = _evaluate(node, {name: known[name] for name in inputs}, opset)
    except Exception as err:  # the reference evaluator raises many kinds; leaving the node as is is safe
        log.debug("not folding %s (%s): %s", node.name, node.op_type, err)
        return None
    if not all(_small_integer(v) for v in values):
        return None
    return values


def _small_integer(array: np.ndarray) -> bool:
    """Shape arithmetic works on small integer (or boolean) tensors; anything else is data, never folded."""
    return array.dtype.kind in "iub" and array.size <= _MAX_FOLD_ELEMENTS


def _evaluate(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
    graph = helper.make_graph(
        [node],
        "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in feeds.items()],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output],
    )
    evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    return [np.asarray(v) for v in evaluator.run(None, feeds)]


def check_model(model: onnx.ModelProto, source: str) -> None:
    """Run the ONNX checker, turning its complaint into one line."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{source}: the ONNX checker rejects the model: {first}") from err
