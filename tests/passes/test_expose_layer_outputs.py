"""ExposeLayerOutputs on a small conv/matmul module: the outputs it adds, their keys, and the numbers they carry."""

from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from edgetvm.pipeline.passes import DynamicQuantize
from edgetvm.pipeline.passes.expose_layer_outputs import ExposeLayerOutputs
from edgetvm.pipeline.passes.quant_layers import is_layer, quant_layers

X_SHAPE = (1, 3, 8, 8)


def _module() -> tvm.IRModule:
    """conv2d (input: the parameter) -> relu -> conv2d -> reshape -> matmul, whose output is main's result (a
    dataflow output, not a dataflow variable)."""
    rng = np.random.default_rng(1)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(X_SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            c0 = bb.emit(R.nn.conv2d(x, relax.const(rng.standard_normal((4, 3, 3, 3)).astype("float32")), padding=1))
            act = bb.emit(R.nn.relu(c0))
            c1 = bb.emit(R.nn.conv2d(act, relax.const(rng.standard_normal((2, 4, 1, 1)).astype("float32"))))
            flat = bb.emit(R.reshape(c1, (1, 128)))
            out = bb.emit_output(R.matmul(flat, relax.const(rng.standard_normal((128, 5)).astype("float32"))))
        bb.emit_func_output(out)
    return bb.get()


def _bindings(func: relax.Function) -> dict:
    return {b.var: b.value for block in func.body.blocks for b in block.bindings}


def test_outputs_added_in_key_order_with_inputs():
    mod = _module()
    exposed = ExposeLayerOutputs(with_inputs=True)(mod)
    assert [layer.key for layer in quant_layers(exposed)] == ["conv2d_0", "conv2d_1", "matmul_0"]
    assert quant_layers(exposed) == quant_layers(mod)  # same layers, same keys: nothing added or removed
    result = exposed["main"].body.body
    assert isinstance(result, relax.Tuple) and len(result.fields) == 1 + 2 * 3
    bindings = _bindings(exposed["main"])
    outputs, inputs = result.fields[1:4], result.fields[4:7]
    for var in outputs:
        assert not isinstance(var, relax.DataflowVar)  # usable outside the dataflow block
        assert is_layer(bindings[var])
    assert [bindings[v].args[1].ty.shape[0] for v in outputs] == [4, 2, 128]  # conv2d_0, conv2d_1, matmul_0
    assert inputs[0].same_as(exposed["main"].params[0])  # conv2d_0 reads the parameter
    for var, layer_output in zip(inputs, outputs, strict=True):
        assert bindings[layer_output].args[0].same_as(var)
    assert result.fields[0].same_as(outputs[2])  # the original result is matmul_0's output
    assert relax.analysis.check_well_formed(exposed)


def test_without_inputs_only_outputs_are_added():
    exposed = ExposeLayerOutputs()(_module())
    assert len(exposed["main"].body.body.fields) == 1 + 3


def _run(mod: tvm.IRModule, x: np.ndarray) -> list[np.ndarray]:
    from edgetvm.pipeline.build import compile_module
    from edgetvm.pipeline.ingest import ImportedModel
    from edgetvm.pipeline.run_local import flatten_tensors
    from edgetvm.targets import resolve_target

    imported = ImportedModel(Path("test-module"), "", "onnx", [], [], mod)
    vm = relax.VirtualMachine(compile_module(imported, resolve_target("x86")), tvm.cpu())
    return [t.numpy() for t in flatten_tensors(vm["main"](tvm.runtime.tensor(x)))]


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(2).standard_normal(X_SHAPE).astype("float32")


def test_exposed_float_build_computes_the_same_numbers(x):
    mod = _module()
    (plain,) = _run(mod, x)
    exposed = _run(ExposeLayerOutputs(with_inputs=True)(mod), x)
    np.testing.assert_allclose(exposed[0], plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(exposed[3], plain, rtol=1e-5, atol=1e-5)  # matmul_0's output is the result
    np.testing.assert_array_equal(exposed[4], x)  # conv2d_0's input is x
    np.testing.assert_allclose(exposed[5], np.maximum(exposed[1], 0.0), rtol=1e-6, atol=1e-6)  # relu(conv2d_0)
    np.testing.assert_allclose(exposed[6], exposed[2].reshape(1, 128), rtol=1e-6, atol=1e-6)


def test_quantized_after_exposure_keeps_the_positions(x):
    mod = ExposeLayerOutputs(with_inputs=True)(_module())
    float_run = _run(mod, x)
    quantized = DynamicQuantize(keep_float=frozenset({"conv2d_1"}))(mod)
    assert len(quantized["main"].body.body.fields) == 7
    run = _run(quantized, x)
    assert all(a.shape == b.shape and b.dtype == np.float32 for a, b in zip(float_run, run, strict=True))
    for i in (1, 3):  # conv2d_0 and matmul_0 are int8 now: close to float, not equal
        signal, noise = np.sum(float_run[i] ** 2), np.sum((run[i] - float_run[i]) ** 2)
        assert 0 < noise and 10 * np.log10(signal / noise) > 20
    np.testing.assert_array_equal(run[4], x)
