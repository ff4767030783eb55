"""The board-side baseline worker: onnxruntime / tflite-runtime sessions in one long-lived process.

This file is pushed to the board and run there as a script by the baselines venv's Python (it imports nothing of
edgetvm, only the standard library, numpy and the runtimes). Python and the runtimes take many seconds to start
under qemu, so one process serves a whole bench: the host loads every baseline model once, then asks for timed
runs round by round, interleaved with the edgetvm variants it times over TVM RPC.

The protocol is one JSON object per line each way, over the process's stdin and stdout (an SSH channel):

- ``{"op": "hello"}`` -> ``{"ok": true, "versions": {...}, "python": ..., "machine": ..., "cores": N}``
- ``{"op": "inputs", "npz": BASE64}``: the inputs every later run uses, by name
- ``{"op": "load", "name": ..., "runtime": "onnxruntime" | "tflite-runtime", "path": ..., "threads": N}``
  -> ``{"ok": true, "details": {...}}``
- ``{"op": "outputs", "name": ...}`` -> ``{"ok": true, "npz": BASE64}``: one run's outputs, ``out0``, ``out1``...
- ``{"op": "time", "name": ..., "settle_ms": MS}`` -> ``{"ok": true, "ms": T, "settle_runs": K}``: untimed runs
  for ``settle_ms`` (at least one when above 0), then one run timed with ``time.perf_counter``
- ``{"op": "quit"}`` -> ``{"ok": true}``, and the process exits

A request that fails answers ``{"ok": false, "error": "Type: message"}`` and the worker goes on. Whatever the
runtimes print goes to stderr: stdout carries the protocol only.
"""

from __future__ import annotations

import base64
import io
import json
import os
import platform
import sys
import time

PROTOCOL = 1


def encode_arrays(arrays: dict) -> str:
    """Arrays by name as a base64 ``.npz`` (what travels in a JSON line)."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_arrays(text: str) -> dict:
    """The arrays of ``encode_arrays``' text, by name."""
    import numpy as np

    with np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


class _OnnxSession:
    def __init__(self, path: str, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.details = {"provider": "CPUExecutionProvider", "intra_op_num_threads": threads}

    def run(self, inputs: dict) -> list:
        return self.session.run(None, inputs)


class _TfliteSession:
    def __init__(self, path: str, threads: int):
        from tflite_runtime.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=path, num_threads=threads)
        self.allocated_for = None
        self.details = {"num_threads": threads, "delegates": "tflite-runtime's default (XNNPACK for float)"}

    def run(self, inputs: dict) -> list:
        interpreter = self.interpreter
        shapes = {name: tuple(value.shape) for name, value in inputs.items()}
        if self.allocated_for != shapes:
            for detail in interpreter.get_input_details():
                if tuple(detail["shape"]) != shapes[detail["name"]]:
                    interpreter.resize_tensor_input(detail["index"], shapes[detail["name"]])
            interpreter.allocate_tensors()
            self.allocated_for = shapes
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], inputs[detail["name"]])
        interpreter.invoke()
        return [interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()]


_SESSIONS = {"onnxruntime": _OnnxSession, "tflite-runtime": _TfliteSession}


def _version(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


class Worker:
    """The worker's state: the inputs and the loaded sessions by name."""

    def __init__(self) -> None:
        self.inputs: dict | None = None
        self.sessions: dict = {}

    def handle(self, request: dict) -> dict:
        op = request.get("op")
        handler = getattr(self, f"_op_{op}", None) if isinstance(op, str) else None
        if handler is None:
            return {"ok": False, "error": f"ValueError: unknown op {op!r}"}
        try:
            return {"ok": True, **handler(request)}
        except Exception as err:  # the host's row says why; the worker serves the other variants on
            message = str(err).strip().splitlines()[-1:] or [""]
            return {"ok": False, "error": f"{type(err).__name__}: {message[0]}"}

    def _op_hello(self, _request: dict) -> dict:
        return {
            "protocol": PROTOCOL,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cores": os.cpu_count(),
            "versions": {
                "onnxruntime": _version("onnxruntime"),
                "tflite-runtime": _version("tflite-runtime"),
                "numpy": _version("numpy"),
            },
        }

    def _op_inputs(self, request: dict) -> dict:
        self.inputs = decode_arrays(request["npz"])
        return {"names": sorted(self.inputs)}

    def _op_load(self, request: dict) -> dict:
        runtime = request["runtime"]
        if runtime not in _SESSIONS:
            raise ValueError(f"runtime must be one of {', '.join(_SESSIONS)}, got {runtime!r}")
        session = _SESSIONS[runtime](request["path"], int(request["threads"]))
        self.sessions[request["name"]] = session
        return {"details": session.details}

    def _session(self, request: dict):
        if self.inputs is None:
            raise ValueError("no inputs yet: send an 'inputs' request first")
        name = request["name"]
        if name not in self.sessions:
            raise ValueError(f"no session named {name!r}; loaded: {sorted(self.sessions)}")
        return self.sessions[name]

    def _op_outputs(self, request: dict) -> dict:
        outputs = self._session(request).run(self.inputs)
        return {"npz": encode_arrays({f"out{index}": value for index, value in enumerate(outputs)})}

    def _op_time(self, request: dict) -> dict:
        session = self._session(request)
        settle_s = float(request.get("settle_ms", 0.0)) / 1e3
        settle_runs = 0
        if settle_s > 0:
            until = time.perf_counter() + settle_s
            while settle_runs == 0 or time.perf_counter() < until:
                session.run(self.inputs)
                settle_runs += 1
        start = time.perf_counter()
        session.run(self.inputs)
        elapsed = time.perf_counter() - start
        return {"ms": elapsed * 1e3, "settle_runs": settle_runs}

    def _op_quit(self, _request: dict) -> dict:
        return {}


def serve(requests, replies) -> None:
    """Answer each JSON line of ``requests`` with one line on ``replies`` until ``quit`` or end of input."""
    worker = Worker()
    for line in requests:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as err:
            reply = {"ok": False, "error": f"JSONDecodeError: {err}"}
            request = {}
        else:
            reply = worker.handle(request) if isinstance(request, dict) else {"ok": False, "error": "not an object"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        if isinstance(request, dict) and request.get("op") == "quit":
            return


def main() -> None:
    # The protocol owns the real stdout; anything else writing to fd 1 (a runtime's C++ logging) goes to stderr.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(sys.stdin, protocol)


if __name__ == "__main__":
    main()
