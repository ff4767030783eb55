"""Replacing buffers of a scheduled PrimFunc by ranges of a flat one: every load, store and block region of an old
buffer is rewritten to the new buffer at an offset plus its row-major index (``tirx.Specialize`` binds symbolic
buffer fields only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import tirx
from tvm.ir.prim import expr as prim

from edgetvm.kernels_schedules.tir_nodes import TIRMutator, UnsupportedNode


@dataclass(frozen=True)
class Element:
    """Where an old buffer of ``shape`` goes: ``buffer[offset + row-major index]`` (``buffer`` one-dimensional)."""

    buffer: tvm.ir.expr.Var
    offset: int
    shape: tuple

    def size(self) -> int:
        return int(np.prod([int(d) for d in self.shape], dtype=np.int64))

    def index(self, indices: list):
        """The flat index of ``indices``; a ``Ramp`` (a vector access) only in the last dimension."""
        dtype = str(indices[0].ty.dtype) if indices else "int64"
        flat, lanes = tirx.IntImm(dtype, self.offset), None
        stride = 1
        for position in range(len(indices) - 1, -1, -1):
            index = indices[position]
            if isinstance(index, prim.Ramp):
                if position != len(indices) - 1:
                    raise UnsupportedNode("a vector index before the last dimension")
                lanes = index
                stride *= int(self.shape[position])
                continue
            flat = flat + index * tirx.IntImm(dtype, stride) if stride != 1 else flat + index
            stride *= int(self.shape[position])
        if lanes is None:
            return flat
        return prim.Ramp(flat + lanes.base, lanes.stride, lanes.lanes)


class BufferSubstitution(TIRMutator):
    """Rewrites the accesses of each ``mapping`` buffer (old buffer -> ``Element``)."""

    def __init__(self, mapping: dict[tvm.ir.expr.Var, Element]):
        self.mapping = mapping

    def load(self, load, indices: list):
        element = self.mapping.get(load.source)
        if element is None:
            return super().load(load, indices)
        return tirx.BufferLoad(element.buffer, [element.index(indices)])

    def store(self, store, value, indices: list):
        element = self.mapping.get(store.buffer)
        if element is None:
            return super().store(store, value, indices)
        return tirx.BufferStore(element.buffer, value, [element.index(indices)])

    def region(self, r):
        element = self.mapping.get(r.source)
        if element is None:
            return r
        # The whole slot: a block's region of it, flattened, need not be one range.
        return tirx.BufferRegion(element.buffer, [tvm.ir.Range.from_min_extent(element.offset, element.size())])


def substitute_buffers(func: tirx.PrimFunc, params: list, mapping: dict[tvm.ir.expr.Var, Element]) -> tirx.PrimFunc:
    """``func`` with parameters ``params`` and every access of a ``mapping`` buffer rewritten to its element.

    Raises
    ------
    tir_nodes.UnsupportedNode
        When the body holds a node kind ``TIRMutator`` does not rebuild.
    """
    body = BufferSubstitution(mapping).stmt(func.body)
    return tirx.PrimFunc(params, body, func.ret_type, func.attrs)
