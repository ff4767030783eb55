"""Fixtures of the pass tests: the kernels pipeline's fusion stage, whole or with one of its passes left out, and a
small dynamic int8 layer to run it on."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from edgetvm.kernels_schedules import pipeline as kernels_pipeline
from edgetvm.pipeline.passes import DynamicQuantize


class FusionStage:
    """``without(name)``: the fusion passes but the one named (to patch in as ``kernels_pipeline.fusion_passes``,
    or to run); ``run(mod, target, passes)``: the layout passes, then ``passes``; ``dynamic_layer(channels)``: a
    small module with one dynamic int8 layer to run them on."""

    DYNAMIC_LAYER_INPUT = (1, 16, 24, 24)

    def __init__(self):
        self.passes = kernels_pipeline.fusion_passes  # before a test patches it

    def without(self, name: str):
        return lambda target: [p for p in self.passes(target) if p.info.name != name]

    @staticmethod
    def run(mod: tvm.IRModule, target: tvm.target.Target, passes: list) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential([*kernels_pipeline.layout_passes(target), *passes])(mod)

    @classmethod
    def dynamic_layer(cls, out_channels: int = 16) -> tvm.IRModule:
        """y = depthwise 3x3 + bias (float); out = relu(1x1 conv 16 -> ``out_channels`` of y), the conv quantized at
        run time: y's max|y| joins y's kernel, and the quantize of y has the conv as its one user."""
        rng = np.random.default_rng(2)
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType(cls.DYNAMIC_LAYER_INPUT, "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                weight = relax.const(rng.standard_normal((16, 1, 3, 3)).astype("float32"))
                conv = R.nn.conv2d(x, weight, padding=[1] * 4, groups=16)
                y = bb.emit(R.add(conv, relax.const(rng.standard_normal((1, 16, 1, 1)).astype("float32"))))
                layer = relax.const(rng.standard_normal((out_channels, 16, 1, 1)).astype("float32"))
                out = bb.emit_output(R.nn.relu(R.nn.conv2d(y, layer)))
            bb.emit_func_output(out)
        return DynamicQuantize(keep_float=frozenset({"conv2d_0"}))(bb.get())


@pytest.fixture
def fusion_stage() -> FusionStage:
    return FusionStage()
