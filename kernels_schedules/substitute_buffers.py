"""Replacing buffers of a scheduled PrimFunc by elements of another: every load, store and block region of an old
buffer is rewritten to the new buffer at fixed indices (``tirx.Specialize`` binds symbolic buffer fields only).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import tirx

from edgetvm.kernels_schedules.tir_nodes import TIRMutator


@dataclass(frozen=True)
class Element:
    """Where an old buffer's accesses go: ``buffer[indices + old indices]``."""

    buffer: tvm.ir.expr.Var
    indices: tuple


class BufferSubstitution(TIRMutator):
    """Rewrites the accesses of each ``mapping`` buffer (old buffer -> ``Element``)."""

    def __init__(self, mapping: dict[tvm.ir.expr.Var, Element]):
        self.mapping = mapping

    def load(self, load, indices: list):
        element = self.mapping.get(load.source)
        if element is None:
            return super().load(load, indices)
        return tirx.BufferLoad(element.buffer, [*element.indices, *indices])

    def store(self, store, value, indices: list):
        element = self.mapping.get(store.buffer)
        if element is None:
            return super().store(store, value, indices)
        return tirx.BufferStore(element.buffer, value, [*element.indices, *indices])

    def region(self, r):
        element = self.mapping.get(r.source)
        if element is None:
            return r
        ranges = [tvm.ir.Range.from_min_extent(i, 1) for i in element.indices] + list(r.region)
        return tirx.BufferRegion(element.buffer, ranges)


def substitute_buffers(func: tirx.PrimFunc, params: list, mapping: dict[tvm.ir.expr.Var, Element]) -> tirx.PrimFunc:
    """``func`` with parameters ``params`` and every access of a ``mapping`` buffer rewritten to its element.

    Raises
    ------
    tir_nodes.UnsupportedNode
        When the body holds a node kind ``TIRMutator`` does not rebuild.
    """
    body = BufferSubstitution(mapping).stmt(func.body)
    return tirx.PrimFunc(params, body, func.ret_type, func.attrs)
