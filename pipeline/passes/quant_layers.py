"""The quantizable layers of a float module, named the same way by every quantization pass and report.

A *layer* is a float32 ``relax.nn.conv2d`` or ``relax.matmul`` whose weight is a constant. Its key is the op's
short name and its ordinal among the layers of ``main`` in binding order (``conv2d_0``, ``matmul_3``...). The
keys are computed on the float module, before any rewrite, so that a quantization pass, the per-layer accuracy
report and mixed precision (``keep_float``) all speak of the same layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from edgetvm.pipeline.passes.bindings import static_shape

LAYER_OPS = {"relax.nn.conv2d": "conv2d", "relax.matmul": "matmul"}


@dataclass(frozen=True)
class QuantLayer:
    """One quantizable layer: its key, its op and its constant weight's shape."""

    key: str
    op: str
    weight_shape: tuple[int, ...]

    def to_json(self) -> dict:
        return {"key": self.key, "op": self.op, "weight_shape": list(self.weight_shape)}


def is_layer(call: relax.Expr) -> bool:
    """Whether ``call`` is a float32 conv2d / matmul with a constant float32 weight of rank >= 2."""
    if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) and call.op.name in LAYER_OPS):
        return False
    if len(call.args) < 2 or not isinstance(call.args[1], tvm.ir.GenericConst):
        return False
    return all(_is_float32(e) for e in (call.args[0], call.args[1], call)) and call.args[1].ty.ndim >= 2


def _is_float32(expr: relax.Expr) -> bool:
    info = expr.ty
    return isinstance(info, relax.TensorType) and info.dtype == "float32" and info.ndim >= 1


def quant_layers(mod: tvm.IRModule) -> list[QuantLayer]:
    """The layers of ``mod["main"]`` in binding order."""
    layers: list[QuantLayer] = []

    def visit(call: relax.Call, key: str) -> relax.Expr:
        layers.append(QuantLayer(key, LAYER_OPS[call.op.name], tuple(int(d) for d in call.args[1].ty.shape)))
        return call

    rewrite_layers(mod["main"], visit)
    return layers


def rewrite_layers(func: relax.Function, rewrite: Callable[[relax.Call, str], relax.Expr]) -> relax.Function:
    """``func`` with each layer's call replaced by ``rewrite(call, key)`` (return the call to keep it).

    Bindings are visited in order; an expression that referred to a layer's output refers to the rewritten
    output.
    """
    return _LayerRewriter(rewrite).visit_expr(func)


def rewrite_main(mod: tvm.IRModule, rewrite: Callable[[relax.Call, str], relax.Expr]) -> tvm.IRModule:
    """A copy of ``mod`` whose ``main`` has its layers rewritten (``rewrite_layers``): what a layer pass returns,
    since a module pass must not change the module it was given."""
    updated = mod.clone()
    updated["main"] = rewrite_layers(mod["main"], rewrite)
    return updated


@relax.expr_functor.mutator
class _LayerRewriter(relax.PyExprMutator):
    def __init__(self, rewrite: Callable[[relax.Call, str], relax.Expr]):
        super().__init__()
        self._rewrite = rewrite
        self._counts: dict[str, int] = {}

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        # Calls are visited in binding order (the module is normalized: every call is a binding's value).
        call = super().visit_call_(call)
        if not is_layer(call):
            return call
        op = LAYER_OPS[call.op.name]
        key = f"{op}_{self._counts.get(op, 0)}"
        self._counts[op] = self._counts.get(op, 0) + 1
        return self._rewrite(call, key)


def narrow_layers(mod: tvm.IRModule, min_input_channels: int) -> list[str]:
    """Keys of the conv2d layers of ``mod["main"]`` with one group and fewer than ``min_input_channels`` input
    channels (a first layer over 3 colour channels)."""
    if min_input_channels <= 0:
        return []
    return _conv_keys(mod, lambda groups, per_group: groups == 1 and per_group < min_input_channels)


def _static_size(expr: relax.Expr) -> int | None:
    """Elements of ``expr``'s tensor, or None when its shape is not static."""
    shape = static_shape(expr)
    return None if shape is None else int(np.prod(shape))


def layer_macs(call: relax.Call) -> int | None:
    """Multiply-adds of one run of a layer (conv2d or matmul), or None when its output shape is not static."""
    outputs = _static_size(call)
    if outputs is None:
        return None
    weight = [int(d) for d in call.args[1].ty.shape]
    if call.op.name == "relax.nn.conv2d":
        layout = str(call.attrs.kernel_layout)
        per_output = weight[layout.index("I")] * weight[layout.index("H")] * weight[layout.index("W")]
    else:  # matmul: x [..., K] @ w [K, N]
        per_output = weight[-2]
    return outputs * per_output


def small_layers(mod: tvm.IRModule, min_macs: int) -> list[str]:
    """Keys of the layers of ``mod["main"]`` (conv2d and matmul) that do fewer than ``min_macs`` multiply-adds per
    run: a squeeze-excite's 200 -> 50 vector, a classifier's last 200 -> 2."""
    if min_macs <= 0:
        return []
    keys: list[str] = []

    def visit(call: relax.Call, key: str) -> relax.Expr:
        macs = layer_macs(call)
        if macs is not None and macs < min_macs:
            keys.append(key)
        return call

    rewrite_layers(mod["main"], visit)
    return keys


def low_reuse_layers(mod: tvm.IRModule, min_macs_per_input: int) -> list[str]:
    """Keys of the layers of ``mod["main"]`` that do fewer than ``min_macs_per_input`` multiply-adds per value of
    their input (a 1x1 conv: its output channels; a matmul: its output columns), depthwise convs excepted (their
    int8 policy is the target's, ``depthwise_layers``)."""
    if min_macs_per_input <= 0:
        return []
    depthwise = set(depthwise_layers(mod))
    keys: list[str] = []

    def visit(call: relax.Call, key: str) -> relax.Expr:
        macs, inputs = layer_macs(call), _static_size(call.args[0])
        if macs is not None and inputs is not None and key not in depthwise and macs < min_macs_per_input * inputs:
            keys.append(key)
        return call

    rewrite_layers(mod["main"], visit)
    return keys


def depthwise_layers(mod: tvm.IRModule) -> list[str]:
    """Keys of the depthwise conv2d layers of ``mod["main"]``: grouped, one input channel per group."""
    return _conv_keys(mod, lambda groups, per_group: groups > 1 and per_group == 1)


def _conv_keys(mod: tvm.IRModule, select: Callable[[int, int], bool]) -> list[str]:
    """Keys of the conv2d layers for which ``select(groups, input channels per group)`` holds."""
    keys: list[str] = []

    def visit(call: relax.Call, key: str) -> relax.Expr:
        if call.op.name == "relax.nn.conv2d":
            per_group = int(call.args[1].ty.shape[str(call.attrs.kernel_layout).index("I")])
            if select(int(call.attrs.groups), per_group):
                keys.append(key)
        return call

    rewrite_layers(mod["main"], visit)
    return keys
