"""TIR intrinsics that TVM 0.27's vectorizer does not know it may vectorize, registered so that it does.

``VectorizeLoop`` turns a ``T.vectorized`` loop back into a serial one when its body calls an op without the
``TVectorizable`` attribute. ``tirx.nearbyint`` (round half to even: ``relax.round``, with which every int8 quantize
and requantize rounds) has none, although the LLVM backend lowers it to ``llvm.nearbyint`` on vectors
(``vroundps`` on x86, ``frintx`` on aarch64). Every quantizing epilogue then ran as scalar code that LLVM's loop
vectorizer re-vectorized across the wrong axis with transposes: PP-OCR's squeeze-excite requantize took 46 us
instead of 12, with the same output bits.

``register()`` is idempotent; compiles (``kernels_schedules.pipeline``) and the tuner's builder workers call it.
"""

from __future__ import annotations

import tvm

VECTORIZABLE = ("tirx.nearbyint",)


def register() -> None:
    for name in VECTORIZABLE:
        if tvm.ir.Op.get(name).get_attr("TVectorizable") is None:
            tvm.ir.register_op_attr(name, "TVectorizable", True)
