"""Roofline facts: a model's multiply-add work, and this host's measured float matrix-multiply throughput.

FLOPs are counted on the imported Relax module (``ImportedModel.mod``), the same for ONNX and TFLite, with the
static shapes ``--input-shape`` fixed: 2 x the multiply-accumulates of every ``conv1d/conv2d/conv3d``,
``conv2d_transpose`` and ``matmul``. Element-wise operators, pooling and softmax are not counted (the usual
convention: they are a few percent of a CNN's arithmetic, and bound by memory, not by the multiply units).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

from edgetvm.errors import EdgeTVMError, last_line

_CONV_OPS = ("relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv3d")
_TRANSPOSED_CONV_OPS = ("relax.nn.conv1d_transpose", "relax.nn.conv2d_transpose")
COUNTED_OPS = (*_CONV_OPS, *_TRANSPOSED_CONV_OPS, "relax.matmul")


def _shape(expr) -> tuple[int, ...] | None:
    from tvm import relax

    info = expr.ty
    if not isinstance(info, relax.TensorType) or info.shape is None:
        return None
    try:
        return tuple(int(d) for d in info.shape.values)
    except (TypeError, ValueError, AttributeError):  # a symbolic dimension: not counted
        return None


def _call_macs(call) -> int:
    """Multiply-accumulates of one counted call; 0 when a shape is not static."""
    name = call.op.name
    out = _shape(call)
    operands = [_shape(arg) for arg in call.args[:2]]
    if out is None or any(shape is None for shape in operands):
        return 0
    data, weight = operands
    if name in _CONV_OPS:
        # every output element sums over (in channels / groups) x kernel window = weight elements / out channels
        out_channels = weight[str(call.attrs.kernel_layout).index("O")]
        return math.prod(out) * math.prod(weight) // out_channels
    if name in _TRANSPOSED_CONV_OPS:
        # every input element scatters into (out channels / groups) x kernel window = weight elements / in channels
        in_channels = weight[str(call.attrs.kernel_layout).index("I")]
        return math.prod(data) * math.prod(weight) // in_channels
    return math.prod(out) * (data[-1] if data else 1)  # matmul: each output element is a length-K dot product


def model_flops(mod) -> int:
    """2 x multiply-accumulates of the conv / matmul calls in every Relax function of ``mod``."""
    import tvm
    from tvm import relax

    macs = 0

    def visit(expr) -> None:
        nonlocal macs
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in COUNTED_OPS:
            macs += _call_macs(expr)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return 2 * macs


@dataclass(frozen=True)
class SgemmThroughput:
    """numpy's float32 matrix multiply on this host, the roof that builds are measured against."""

    gflops: float
    size: int
    threads: int
    blas: str
    method: str

    def to_json(self) -> dict:
        return asdict(self)


# Runs in a fresh interpreter so that the BLAS thread variables are set before numpy loads its BLAS.
_SGEMM_SCRIPT = """
import json, sys, time
import numpy as np
size, rounds = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.random((size, size), dtype=np.float32)
b = rng.random((size, size), dtype=np.float32)
np.matmul(a, b)
samples = []
for _ in range(rounds):
    start = time.perf_counter()
    np.matmul(a, b)
    samples.append(time.perf_counter() - start)
blas = np.__config__.CONFIG.get("Build Dependencies", {}).get("blas", {})
desc = f"{blas.get('name', 'unknown')} {blas.get('version', '')}".strip()
try:
    from threadpoolctl import threadpool_info
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    if pools:
        p = pools[0]
        desc = f"{p['internal_api']} {p.get('version')} {p.get('architecture', '')}, {p['num_threads']} threads"
except ImportError:
    pass
print(json.dumps({"seconds": min(samples), "blas": desc}))
"""

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "BLIS_NUM_THREADS")


def measure_sgemm(threads: int, size: int = 1024, rounds: int = 10) -> SgemmThroughput:
    """Peak throughput (best of ``rounds``) of ``size`` x ``size`` float32 matmuls with numpy's BLAS on ``threads``.

    The best run, not the median: it is the roof, and on a shared machine the median mostly measures the neighbours.

    The thread count is set through the BLAS libraries' environment variables in a child interpreter, before
    numpy is imported: it holds for OpenBLAS, MKL and BLIS alike and needs no extra package.
    """
    env = dict(os.environ, **{name: str(threads) for name in BLAS_THREAD_VARIABLES})
    argv = [sys.executable, "-c", _SGEMM_SCRIPT, str(size), str(rounds)]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=300)
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as err:
        detail = err.stderr if isinstance(err, subprocess.CalledProcessError) else err
        raise EdgeTVMError(f"measuring numpy's sgemm throughput failed: {last_line(detail)}") from err
    return SgemmThroughput(
        gflops=2 * size**3 / result["seconds"] / 1e9,
        size=size,
        threads=threads,
        blas=result["blas"],
        method=f"numpy.matmul float32, best of {rounds}, in a child process with "
        + "/".join(BLAS_THREAD_VARIABLES)
        + f"={threads} set before numpy is imported",
    )
