import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetvm.errors import ModelError
from edgetvm.pipeline.onnx_static_shapes import fix_input_shapes, fold_shape_computations


def _reshape_by_shape_model():
    """x[N,3,4,4] -> GlobalAveragePool -> Reshape to concat(shape(x)[0:1], [-1]): the PaddleOCR pattern."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Shape", ["p"], ["s"]),
        helper.make_node("Slice", ["s", "starts", "ends"], ["s0"]),
        helper.make_node("Concat", ["s0", "minus_one"], ["new_shape"], axis=0),
        helper.make_node("Reshape", ["p", "new_shape"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "starts"),
        numpy_helper.from_array(np.array([1], np.int64), "ends"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_shape_chain_folds_to_a_constant_and_keeps_numerics():
    from onnx.reference import ReferenceEvaluator

    model = _reshape_by_shape_model()
    folded = fold_shape_computations(fix_input_shapes(model, {"x": (2, 3, 4, 4)}))
    ops = [n.op_type for n in folded.graph.node]
    assert "Shape" not in ops and "Concat" not in ops
    assert ops.count("Constant") >= 1 and "Reshape" in ops
    x = np.random.default_rng(0).random((2, 3, 4, 4), dtype=np.float32)
    np.testing.assert_allclose(ReferenceEvaluator(folded).run(None, {"x": x})[0], x.mean(axis=(2, 3)), rtol=1e-6)


def test_dynamic_input_without_shape_names_input_and_flag():
    with pytest.raises(ModelError, match=r"input 'x' has dynamic dimension.*--input-shape x=Nx3x4x4"):
        fix_input_shapes(_reshape_by_shape_model(), {})


def test_shape_that_contradicts_a_static_dim_is_refused():
    with pytest.raises(ModelError, match="does not fit input .x., declared as"):
        fix_input_shapes(_reshape_by_shape_model(), {"x": (1, 4, 4, 4)})
    with pytest.raises(ModelError, match="unknown input"):
        fix_input_shapes(_reshape_by_shape_model(), {"nope": (1,)})


def test_float_weights_are_never_folded():
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    nodes = [helper.make_node("Add", ["w", "w"], ["w2"]), helper.make_node("MatMul", ["x", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [w],
    )
    model = fold_shape_computations(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert [n.op_type for n in model.graph.node] == ["Add", "MatMul"]
