"""Per-operator throughput of the default schedules: the conv and dense shapes that dominate real CNNs and MLPs.

Each operator is built alone (NHWC, the layout edgetvm compiles convolutions to) with edgetvm's default
schedules and with TVM's own untuned pipeline, and timed side by side with the same operator in onnxruntime
(NCHW, its own layout handling), all on the same threads; GFLOP/s is also given as a fraction of numpy's sgemm
on those threads (the roofline). ``python bench/kernels.py`` alone, or through ``bench/suite.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetvm.cache import write_text_atomic
from edgetvm.pipeline.roofline import measure_sgemm
from edgetvm.pipeline.runtime_threads import call_with_tvm_threads
from edgetvm.targets import resolve_target

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Kernel:
    name: str
    kind: str  # conv | dense
    shape: tuple  # conv: (H, W, IC, OC, K, stride, groups); dense: (M, K, N)
    dtype: str = "float32"

    def flops(self) -> int:
        if self.kind == "dense":
            m, k, n = self.shape
            return 2 * m * k * n
        h, w, ic, oc, k, stride, groups = self.shape
        return 2 * (h // stride) * (w // stride) * oc * (ic // groups) * k * k


KERNELS = (
    Kernel("conv 3x3, 56x56, 64->64", "conv", (56, 56, 64, 64, 3, 1, 1)),
    Kernel("conv 1x1, 28x28, 128->256", "conv", (28, 28, 128, 256, 1, 1, 1)),
    Kernel("conv 3x3 stride 2, 112x112, 32->64", "conv", (112, 112, 32, 64, 3, 2, 1)),
    Kernel("depthwise 3x3, 56x56x128", "conv", (56, 56, 128, 128, 3, 1, 128)),
    Kernel("dense 1x1024 -> 1000", "dense", (1, 1024, 1000)),
    Kernel("dense 64x512 -> 512", "dense", (64, 512, 512)),
    Kernel("int8 conv 3x3, 28x28, 64->64", "conv", (28, 28, 64, 64, 3, 1, 1), "int8"),
    Kernel("float conv 3x3, 28x28, 64->64", "conv", (28, 28, 64, 64, 3, 1, 1)),
)


def _relax_module(kernel: Kernel, rng):
    from tvm import relax

    bb = relax.BlockBuilder()
    int8 = kernel.dtype == "int8"
    if kernel.kind == "dense":
        m, k, n = kernel.shape
        x = relax.Var("x", relax.TensorType((m, k), kernel.dtype))
        weight = rng.standard_normal((k, n)).astype("float32")
        build = lambda v: relax.op.matmul(v, relax.const(weight))  # noqa: E731
        data = rng.standard_normal((m, k)).astype("float32")
    else:
        h, w, ic, oc, k, stride, groups = kernel.shape
        x = relax.Var("x", relax.TensorType((1, h, w, ic), kernel.dtype))
        if int8:
            weight = rng.integers(-127, 128, (k, k, ic // groups, oc)).astype("int8")
            data = rng.integers(-127, 128, (1, h, w, ic)).astype("int8")
        else:
            weight = rng.standard_normal((k, k, ic // groups, oc)).astype("float32")
            data = rng.standard_normal((1, h, w, ic)).astype("float32")

        def build(v):
            return relax.op.nn.conv2d(
                v,
                relax.const(weight),
                strides=stride,
                padding=k // 2,
                groups=groups,
                data_layout="NHWC",
                kernel_layout="HWIO",
                out_dtype="int32" if int8 else "float32",
            )

    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(build(x)))
        bb.emit_func_output(out)
    return bb.get(), data, weight


def _onnx_session(kernel: Kernel, weight: np.ndarray, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    if kernel.kind == "dense":
        m, k, n = kernel.shape
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])]
        w = weight
        data_shape = (m, k)
    else:
        h, wd, ic, oc, k, stride, groups = kernel.shape
        node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[stride] * 2, pads=[k // 2] * 4, group=groups)
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ic, h, wd])]
        w = weight.transpose(3, 2, 0, 1).copy()  # HWIO -> OIHW
        data_shape = (1, ic, h, wd)
    graph = helper.make_graph(
        [node],
        "k",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    data = np.random.default_rng(1).standard_normal(data_shape).astype(np.float32)
    return lambda: session.run(None, {"x": data})


def _median_ms(func, repeat: int, settle_s: float = 0.1) -> float:
    times = []
    for _ in range(repeat):
        deadline = time.perf_counter() + settle_s
        while time.perf_counter() < deadline:  # untimed: let the previous runtime's spinning pool go quiet
            func()
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def measure(threads: int, repeat: int) -> dict:
    import tvm
    from tvm import relax

    from edgetvm.kernels_schedules.pipeline import relax_pipeline

    target = resolve_target("x86").tvm_target()
    rng = np.random.default_rng(0)
    rows = []
    for kernel in KERNELS:
        mod, data, weight = _relax_module(kernel, rng)
        runs = {}
        for label, schedules in (("edgetvm", True), ("tvm-untuned", False)):
            vm = relax.VirtualMachine(
                tvm.compile(mod, target, relax_pipeline=relax_pipeline(target, schedules=schedules)), tvm.cpu()
            )
            tensor = tvm.runtime.tensor(data)
            runs[label] = (lambda vm=vm, tensor=tensor: vm["main"](tensor), repeat if schedules else 3)
        if kernel.dtype == "float32":
            runs["onnxruntime"] = (_onnx_session(kernel, weight, threads), repeat)
        row = {"kernel": kernel.name, "dtype": kernel.dtype, "mflop": kernel.flops() / 1e6}
        for label, (func, n) in runs.items():
            func()
            ms = _median_ms(func, n, 0.0 if label == "tvm-untuned" else 0.1)
            row[label] = {"median_ms": ms, "gflops": kernel.flops() / ms / 1e6}
        rows.append(row)
    return {"rows": rows}


def markdown(result: dict) -> str:
    sgemm = result["sgemm_gflops"]
    lines = [
        "## Default schedules, one operator at a time",
        "",
        f"- {result['threads']} threads for every runtime; roofline: numpy sgemm {sgemm:.1f} GFLOP/s on them",
        "- edgetvm: default schedules, NHWC; tvm-untuned: TVM 0.27's own CPU pipeline; onnxruntime: the same "
        "operator alone, NCHW. int8 rows count int8 multiply-adds as 2 ops.",
        "",
        "| operator | MFLOP | edgetvm ms | GFLOP/s (% sgemm) | tvm-untuned ms | onnxruntime ms "
        "| edgetvm / onnxruntime |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        ours = row["edgetvm"]
        ort = row.get("onnxruntime")
        ratio = f"{ours['median_ms'] / ort['median_ms']:.2f}" if ort else "n/a"
        lines.append(
            f"| {row['kernel']} | {row['mflop']:.1f} | {ours['median_ms']:.3f} | {ours['gflops']:.1f} "
            f"({100 * ours['gflops'] / sgemm:.0f}%) | {row['tvm-untuned']['median_ms']:.2f} | "
            f"{ort['median_ms']:.3f} | {ratio} |"
            if ort
            else f"| {row['kernel']} | {row['mflop']:.1f} | {ours['median_ms']:.3f} | {ours['gflops']:.1f} "
            f"({100 * ours['gflops'] / sgemm:.0f}%) | {row['tvm-untuned']['median_ms']:.2f} | n/a | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def run(threads: int, repeat: int, results: Path) -> str:
    sgemm = measure_sgemm(threads)
    result, effective = call_with_tvm_threads(lambda: measure(threads, repeat), threads)
    result.update({"threads": threads, "tvm_threads": effective, "sgemm_gflops": sgemm.gflops})
    for name, text in (("kernels.json", json.dumps(result, indent=2)), ("kernels.md", markdown(result))):
        write_text_atomic(results / name, text)
    return markdown(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=resolve_target("x86").threads)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    print(run(args.threads, args.repeat, args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
