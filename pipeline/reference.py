"""Reference runs of the original model with the framework's own runtime (onnxruntime, tflite-runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetvm.errors import InputError
from edgetvm.pipeline.ingest import detect_format


class ReferenceModel:
    """The original model in onnxruntime (``.onnx``) or tflite-runtime (``.tflite``) on this host."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.format = detect_format(self.path)
        self.runtime = "onnxruntime" if self.format == "onnx" else "tflite-runtime"
        self._allocated = False  # tflite: tensors are allocated on the first run (and again after a resize)
        self._session = self._open_onnx(threads) if self.format == "onnx" else self._open_tflite(threads)

    def _open_onnx(self, threads):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def _open_tflite(self, threads):
        from tflite_runtime.interpreter import Interpreter

        from edgetvm.pipeline.ingest import verified_tflite

        verified_tflite(self.path.read_bytes(), self.path)  # tflite-runtime crashes on a corrupt file
        return Interpreter(model_path=str(self.path), num_threads=threads)

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in the model's order."""
        if self.format == "onnx":
            return [np.asarray(o) for o in self._session.run(None, inputs)]
        return self._run_tflite(inputs)

    def _run_tflite(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        interpreter = self._session
        details = interpreter.get_input_details()
        resized = False
        for detail in details:
            if detail["name"] not in inputs:
                raise InputError(f"reference {self.path}: no value for input {detail['name']!r}")
            if tuple(detail["shape"]) != inputs[detail["name"]].shape:
                interpreter.resize_tensor_input(detail["index"], inputs[detail["name"]].shape)
                resized = True
        if resized or not self._allocated:
            interpreter.allocate_tensors()
            self._allocated = True
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], inputs[detail["name"]])
        interpreter.invoke()
        return [interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()]
