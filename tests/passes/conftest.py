"""Fixtures of the pass tests: the kernels pipeline's fusion stage, whole or with one of its passes left out."""

from __future__ import annotations

import pytest
import tvm

from edgetvm.kernels_schedules import pipeline as kernels_pipeline


class FusionStage:
    """``without(name)``: the fusion passes but the one named (to patch in as ``kernels_pipeline.fusion_passes``,
    or to run); ``run(mod, target, passes)``: the layout passes, then ``passes``."""

    def __init__(self):
        self.passes = kernels_pipeline.fusion_passes  # before a test patches it

    def without(self, name: str):
        return lambda target: [p for p in self.passes(target) if p.info.name != name]

    @staticmethod
    def run(mod: tvm.IRModule, target: tvm.target.Target, passes: list) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential([*kernels_pipeline.layout_passes(target), *passes])(mod)


@pytest.fixture
def fusion_stage() -> FusionStage:
    return FusionStage()
