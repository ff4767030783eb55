"""Shared by the layout passes that replace Relax ops with TE kernels of their own (``call_tir``)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import rewrite_call


class TEKernelRewriter:
    """Rewrites each Relax function's calls matching ``pattern`` with ``rewrite(call, matches)``, which may emit
    ``call_tir`` of TE kernels through ``te_kernel``; one PrimFunc per distinct kernel."""

    pattern = None  # a tvm.relax.dpl pattern

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self._kernels: dict[tuple, tuple] = {}
        self._builder = relax.BlockBuilder(mod.clone())  # adds the kernels' PrimFuncs with typed GlobalVars
        rewritten = {
            gvar: rewrite_call(self.pattern, self.rewrite, func)
            for gvar, func in mod.functions_items()
            if isinstance(func, relax.Function)
        }
        updated = self._builder.get()
        for gvar, func in rewritten.items():
            updated[gvar] = func
        return updated

    def rewrite(self, call: relax.Call, matches) -> relax.Expr:
        raise NotImplementedError

    def te_kernel(self, name: str, compute, args: list[tuple[relax.Expr, tuple, str]], key: tuple) -> relax.Expr:
        """``call_tir`` of the TE ``compute(*placeholders)`` over ``args`` (expression, shape, dtype), one PrimFunc
        per distinct ``key``; marked out-elementwise-fusable, so FuseOps puts the epilogue that follows in it."""
        from tvm import te

        shapes = [tuple(int(d) for d in shape) for _, shape, _ in args]
        dtypes = [dtype for _, _, dtype in args]
        key = (name, *shapes, *key)
        if key not in self._kernels:
            # int64 extents, as LegalizeOps writes them: FuseTIR requires a tensor's buffers to agree exactly.
            placeholders = [
                te.placeholder([tvm.tirx.const(d, "int64") for d in shape], dtype, name=f"arg{i}")
                for i, (shape, dtype) in enumerate(zip(shapes, dtypes, strict=True))
            ]
            out = compute(*placeholders)
            func = te.create_prim_func([*placeholders, out]).with_attr("op_pattern", 4)  # kOutEWiseFusable
            gvar = self._builder.add_func(func, f"{name}{len(self._kernels)}")
            self._kernels[key] = (gvar, [int(d) for d in out.shape], str(out.dtype))
        gvar, out_shape, out_dtype = self._kernels[key]
        return relax.call_tir(gvar, [expr for expr, _, _ in args], relax.TensorType(out_shape, out_dtype))


def pad_output_channels(weight: np.ndarray, multiple: int) -> np.ndarray:
    """``weight`` with zero output channels (its last axis: HWIO's O, a matmul's N) appended up to a multiple of
    ``multiple`` (whole vector registers)."""
    missing = -weight.shape[-1] % multiple
    return np.pad(weight, [(0, 0)] * (weight.ndim - 1) + [(0, missing)])
