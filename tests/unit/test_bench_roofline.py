"""FLOP counting on imported Relax modules against hand-counted multiply-accumulates; TVM's thread count."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgetvm.pipeline.roofline import model_flops
from edgetvm.pipeline.runtime_threads import call_in_new_thread, call_with_tvm_threads, configure_tvm_threads


def _const(name, shape):
    return numpy_helper.from_array(np.random.default_rng(0).random(shape, dtype=np.float32), name)


def _import(nodes, initializers, x_shape, y_shape):
    from tvm.relax.frontend.onnx import from_onnx

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return from_onnx(model, keep_params_in_input=False)


def test_conv_depthwise_and_gemm():
    nodes = [
        # 3x3 conv, stride 2, 3 -> 8 channels, 16x16 -> 8x8: 8*8*8 outputs x 3*3*3 MACs
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2]),
        # depthwise 3x3 over 8 channels: 8*8*8 outputs x 9 MACs
        helper.make_node("Conv", ["a", "w2"], ["b"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Flatten", ["b"], ["c"]),
        # Gemm 512 -> 10: 10 outputs x 512 MACs
        helper.make_node("Gemm", ["c", "w3"], ["y"], transB=1),
    ]
    weights = [_const("w1", (8, 3, 3, 3)), _const("w2", (8, 1, 3, 3)), _const("w3", (10, 512))]
    mod = _import(nodes, weights, [1, 3, 16, 16], [1, 10])
    macs = 8 * 8 * 8 * 27 + 8 * 8 * 8 * 9 + 10 * 512
    assert model_flops(mod) == 2 * macs


def test_batched_matmul_and_uncounted_ops():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("MatMul", ["a", "w"], ["y"]),  # (2, 5, 6) @ (6, 7): 2*5*7 outputs x 6 MACs
    ]
    mod = _import(nodes, [_const("w", (6, 7))], [2, 5, 6], [2, 5, 7])
    assert model_flops(mod) == 2 * (2 * 5 * 7 * 6)


def test_tvm_thread_pool_has_the_threads_asked_for(monkeypatch):
    import os

    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    # TVM's own default on x86 is half the hardware threads; a pool can only shrink after it is created.
    assert call_with_tvm_threads(lambda: "done", 2) == ("done", 2)
    assert call_with_tvm_threads(lambda: configure_tvm_threads(1), 2) == (1, 2)  # created with 2, shrunk to 1
    assert os.environ["TVM_NUM_THREADS"] == "1"  # restored


def test_call_in_new_thread_reraises():
    def fail():
        raise KeyError("x")

    try:
        call_in_new_thread(fail)
    except KeyError as err:
        assert err.args == ("x",)
    else:
        raise AssertionError("no exception")
