"""The baseline worker's line protocol, with the real worker script run on this host over pipes.

The board runs the same file under its own Python; here the host's onnxruntime and tflite-runtime serve, so
every request and failure path is exercised without a board.
"""

import io
import json
import subprocess
import sys
from importlib import metadata

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetvm.deploy.baseline_runtime import wheel_platforms, worker_script
from edgetvm.deploy.baseline_session import WorkerProtocol, WorkerRequestError
from edgetvm.deploy.baseline_worker import decode_arrays, encode_arrays, serve
from edgetvm.deploy.emulated_board import PI4_CPUINFO_MODEL, emulated_cpuinfo, qemu_cpu_env
from edgetvm.errors import BoardError
from edgetvm.pipeline.host_facts import cpu_model_in
from edgetvm.pipeline.reference import ReferenceModel
from edgetvm.targets import resolve_target


@pytest.fixture(scope="module")
def matmul_model(tmp_path_factory):
    """y = relu(x @ W + b): 1x8 -> 1x4."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w, b],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("worker") / "mm.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture()
def worker():
    """The worker script in a child process of this host's Python; the protocol over its pipes."""
    process = subprocess.Popen(
        [sys.executable, "-u", str(worker_script())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    yield WorkerProtocol(process.stdin, process.stdout, "the test worker", lambda: f"exit {process.wait(10)}")
    process.kill()
    process.wait()


INPUTS = {"x": np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)}


def test_hello_names_the_runtimes_the_worker_has(worker):
    facts = worker.hello()
    assert facts["versions"]["onnxruntime"] == metadata.version("onnxruntime")
    assert facts["versions"]["tflite-runtime"] == metadata.version("tflite-runtime")
    assert facts["machine"] and facts["cores"] >= 1 and facts["python"].count(".") == 2


def test_outputs_are_those_of_the_model_on_the_worker_inputs(worker, matmul_model):
    worker.send_inputs(INPUTS)
    details = worker.load("onnxruntime float", "onnxruntime", str(matmul_model), 2)
    assert details == {"provider": "CPUExecutionProvider", "intra_op_num_threads": 2}
    (actual,) = worker.outputs("onnxruntime float")
    (expected,) = ReferenceModel(matmul_model).run(INPUTS)
    np.testing.assert_array_equal(actual, expected)
    assert actual.shape == (1, 4) and actual.dtype == np.float32


def test_a_tflite_model_runs_in_tflite_runtime(worker, blazeface_path):
    inputs = {"input": np.random.default_rng(0).random((1, 128, 128, 3), dtype=np.float32)}
    worker.send_inputs(inputs)
    worker.load("tflite-runtime float", "tflite-runtime", str(blazeface_path), 1)
    actual = worker.outputs("tflite-runtime float")
    expected = ReferenceModel(blazeface_path, threads=1).run(inputs)
    assert [a.shape for a in actual] == [(1, 896, 16), (1, 896, 1)]
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def test_timed_runs_settle_first_when_asked(worker, matmul_model):
    worker.send_inputs(INPUTS)
    worker.load("m", "onnxruntime", str(matmul_model), 1)
    no_settle = worker.request("time", name="m", settle_ms=0)
    settled = worker.request("time", name="m", settle_ms=5)
    assert no_settle["settle_runs"] == 0 and no_settle["ms"] > 0
    assert settled["settle_runs"] >= 1 and settled["ms"] > 0
    assert worker.time_once("m", 0.0) > 0


@pytest.mark.parametrize(
    "op, fields, message",
    [
        ("outputs", {"name": "m"}, "no inputs yet: send an 'inputs' request first"),
        ("load", {"name": "m", "runtime": "tvm", "path": "x", "threads": 1}, "runtime must be one of"),
        ("load", {"name": "m", "runtime": "onnxruntime", "path": "/nonexistent.onnx", "threads": 1}, "/nonexistent"),
        ("launch", {}, "unknown op 'launch'"),
    ],
)
def test_a_failed_request_says_why_and_the_worker_serves_on(worker, op, fields, message):
    with pytest.raises(WorkerRequestError, match=f"the test worker: {op} failed: .*") as err:
        worker.request(op, **fields)
    assert message in str(err.value)
    assert worker.hello()["protocol"] == 1


def test_an_unknown_session_lists_the_loaded_ones(worker, matmul_model):
    worker.send_inputs(INPUTS)
    worker.load("a", "onnxruntime", str(matmul_model), 1)
    with pytest.raises(WorkerRequestError, match=r"no session named 'b'; loaded: \['a'\]"):
        worker.outputs("b")


def test_quit_ends_the_worker_and_a_gone_worker_is_a_board_error(worker):
    worker.quit()
    with pytest.raises(BoardError, match=r"the test worker( exited during 'hello': exit 0|: no answer to 'hello')"):
        worker.hello()


def test_serve_answers_a_line_that_is_not_json_and_goes_on():
    replies = io.StringIO()
    serve(io.StringIO('not json\n\n{"op": "hello"}\n[1]\n{"op": "quit"}\n{"op": "hello"}\n'), replies)
    answers = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert [a["ok"] for a in answers] == [False, True, False, True]  # nothing after quit
    assert answers[0]["error"].startswith("JSONDecodeError")


def test_arrays_travel_exactly():
    arrays = {"a": np.arange(6, dtype=np.int8).reshape(2, 3), "b": np.float32([1.5, -0.0, np.inf])}
    back = decode_arrays(encode_arrays(arrays))
    assert sorted(back) == ["a", "b"]
    for name, array in arrays.items():
        np.testing.assert_array_equal(back[name], array)
        assert back[name].dtype == array.dtype


def test_wheel_tags_reach_the_boards_glibc():
    tags = wheel_platforms("aarch64", "glibc 2.36")
    assert tags[0] == "manylinux2014_aarch64" and tags[-1] == "manylinux_2_36_aarch64"
    assert "manylinux_2_34_aarch64" in tags and "manylinux_2_37_aarch64" not in tags
    with pytest.raises(BoardError, match="cannot read the board's C library version"):
        wheel_platforms("aarch64", "musl libc")


def test_the_emulated_board_runs_as_the_targets_cpu():
    assert qemu_cpu_env(resolve_target("rpi4")) == {"QEMU_CPU": "cortex-a72"}
    assert qemu_cpu_env(resolve_target("rpi5")) == {"QEMU_CPU": "cortex-a76"}
    assert qemu_cpu_env(resolve_target("x86")) == {}


def test_the_emulated_cpuinfo_is_a_pi4_that_says_it_is_emulated():
    text = emulated_cpuinfo(3)
    assert cpu_model_in(text) == PI4_CPUINFO_MODEL and "emulated" in PI4_CPUINFO_MODEL
    assert text.count("CPU part\t: 0xd08") == 3
    assert [line for line in text.splitlines() if line.startswith("processor")][-1] == "processor\t: 2"
