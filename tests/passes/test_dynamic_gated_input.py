"""DynamicGatedInput in the w8a8-dynamic pipeline: a squeeze-excite gated layer input is scaled and quantized from
the map before its gates, the product is no longer formed, and the numbers agree with the pipeline without it."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from edgetvm.pipeline.quantize import PIPELINES, PipelineOptions
from edgetvm.pipeline.schemes import get_scheme

X_SHAPE = (1, 4, 8, 8)
MAP_SHAPE = (1, 8, 8, 8)
HOST = {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}
GATES = {
    "hard_sigmoid": lambda v: R.clip(v, R.prim_value(0.0), R.prim_value(1.0)),
    "sigmoid": R.sigmoid,
    "tanh": R.tanh,  # can be negative: |h * s| is not |h| * s
}
GATE_OPS = ("relax.clip", "relax.sigmoid", "relax.tanh")


def _squeeze_excite(gate: str, second_user: bool = False) -> tvm.IRModule:
    """conv 3x3 + relu = h; s = gate(mean(h) * 0.2 + 0.5) per channel; conv 1x1 of h * s [+ (h * s), a 2nd user]."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((8, 8, 1, 1)).astype(np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(X_SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(R.nn.relu(R.nn.conv2d(x, relax.const(w1), padding=[1, 1, 1, 1])))
            squeezed = bb.emit(R.mean(h, axis=[2, 3], keepdims=True))
            s = bb.emit(GATES[gate](R.add(R.multiply(squeezed, R.const(0.2)), R.const(0.5))))
            gated = bb.emit(R.multiply(h, s))
            out = bb.emit(R.nn.conv2d(gated, relax.const(w2)))
            if second_user:
                out = bb.emit(R.add(out, gated))
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()


def _dynamic(mod: tvm.IRModule, gated: bool = True) -> tvm.IRModule:
    passes = PIPELINES["w8a8-dynamic"](PipelineOptions(get_scheme("w8a8-dynamic")))
    if not gated:
        passes = [p for p in passes if p.info.name != "DynamicGatedInput"]
    return tvm.transform.Sequential(passes)(mod)


def _calls(mod: tvm.IRModule, op: str) -> list[relax.Call]:
    values = [b.value for block in mod["main"].body.blocks for b in block.bindings]
    return [v for v in values if isinstance(v, relax.Call) and getattr(v.op, "name", None) == op]


def _gated_products(mod: tvm.IRModule) -> int:
    """Products of the map by the gates themselves (the quantize's product by ``s * 127 / max`` does not count)."""
    values = {b.var: b.value for block in mod["main"].body.blocks for b in block.bindings}
    gates = {var for var, value in values.items() if getattr(getattr(value, "op", None), "name", "") in GATE_OPS}
    return sum(
        1
        for call in _calls(mod, "relax.multiply")
        if any(a in gates for a in call.args) and tuple(int(d) for d in call.ty.shape) == MAP_SHAPE
    )


def _channel_max_of_magnitudes(mod: tvm.IRModule) -> list[relax.Call]:
    return [
        c for c in _calls(mod, "relax.max") if c.attrs.axis is not None and [int(a) for a in c.attrs.axis] == [2, 3]
    ]


def _run(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    target = tvm.target.Target(HOST)
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("gate", ["hard_sigmoid", "sigmoid"])
def test_gated_input_is_quantized_from_the_map_before_its_gates(gate):
    without = _dynamic(_squeeze_excite(gate), gated=False)
    assert _gated_products(without) == 1 and not _channel_max_of_magnitudes(without)
    rewritten = _dynamic(_squeeze_excite(gate))
    assert _gated_products(rewritten) == 0  # the product is gone: its quantize multiplies h by s * 127 / max
    (channel_max,) = _channel_max_of_magnitudes(rewritten)
    assert tuple(int(d) for d in channel_max.ty.shape) == (1, 8, 1, 1)
    assert len(_calls(rewritten, "relax.nn.conv2d")) == 2  # both layers still int8
    assert all(c.args[0].ty.dtype == "int8" for c in _calls(rewritten, "relax.nn.conv2d"))


@pytest.mark.parametrize("gate", ["hard_sigmoid", "sigmoid"])
def test_gated_input_keeps_the_numbers(gate):
    """The scale is the same float (``max|h * s| = max(s * max|h|)`` for ``s >= 0``); the quantize rounds once more,
    which may move a value by one step: within 1% of the output's range over real-valued random inputs."""
    mod = _squeeze_excite(gate)
    rewritten, without = _dynamic(mod), _dynamic(mod, gated=False)
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal(X_SHAPE).astype(np.float32)
        expected = _run(without, x)
        np.testing.assert_allclose(_run(rewritten, x), expected, rtol=0, atol=0.01 * np.abs(expected).max())


@pytest.mark.parametrize("gate, second_user", [("tanh", False), ("hard_sigmoid", True)])
def test_signed_gates_and_products_with_other_users_keep_their_float_form(gate, second_user):
    rewritten = _dynamic(_squeeze_excite(gate, second_user))
    assert _gated_products(rewritten) == 1 and not _channel_max_of_magnitudes(rewritten)
