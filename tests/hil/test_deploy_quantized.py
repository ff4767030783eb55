"""Quantized rpi4 builds of the trained MNIST CNN (w8a8-static, w8a8-dynamic) on the emulated board: the int8
kernels for aarch64 give the digit's label and agree with the float model on the host."""

import json

import numpy as np
import pytest

from edgetvm.cli import main
from edgetvm.pipeline.trained_models import calibration_set_path, load_eval_set, trained_model_path

# Measured on the host for the same images: cosine to float above 0.999 for both schemes.
MIN_COSINE = 0.99


def _on_the_board(artifact, tmp_path, images: np.ndarray, *extra: str) -> tuple[dict, dict, np.ndarray]:
    """``artifact`` deployed to the emulated board on ``images``: the report, its one output's accuracy entry and
    the logits the board computed."""
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, image=images)
    report_path = tmp_path / "report.json"
    argv = ["-q", "deploy", str(artifact), "--board", "emulated", "--repeat", "2", "--inputs", str(inputs), *extra]
    assert main([*argv, "-o", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    (output,) = report["accuracy"]["outputs"]
    with np.load(report_path.with_suffix(".outputs.npz")) as outputs:
        return report, output, outputs["logits"]


@pytest.mark.parametrize("scheme", ["w8a8-static", "w8a8-dynamic"])
def test_quantized_mnist_on_the_board(emulated_board, tmp_path, scheme):
    model = trained_model_path("mnist-cnn")
    calib = ["--calib", str(calibration_set_path("mnist-cnn"))] if scheme == "w8a8-static" else []
    artifact = tmp_path / "artifact"
    assert main(["-q", "compile", str(model), "-t", "rpi4", "--quantize", scheme, *calib, "-o", str(artifact)]) == 0
    images, labels = load_eval_set("mnist-cnn")
    report, output, logits = _on_the_board(artifact, tmp_path, images[:1])
    assert report["accuracy"]["reference_runtime"] == "onnxruntime"
    assert output["top1_agreement"] == 1.0 and output["cosine"] > MIN_COSINE, output
    assert output["max_abs_error"] > 1e-4  # the int8 layers ran, not a float build
    assert int(logits.argmax()) == int(labels[0])


def test_per_row_dynamic_mnist_batch_on_the_board(emulated_board, tmp_path, mnist_batched_path):
    """w8a8-dynamic with a scale per row (digit) of the dense layer's input: eight digits a run on the board agree
    with onnxruntime's float run of the same batch."""
    artifact = tmp_path / "artifact"
    argv = ["-q", "compile", str(mnist_batched_path), "-t", "rpi4", "--quantize", "w8a8-dynamic"]
    assert main([*argv, "--activation-granularity", "per-row", "-o", str(artifact)]) == 0
    images, labels = load_eval_set("mnist-cnn")
    _, output, logits = _on_the_board(artifact, tmp_path, images[:8])
    assert output["top1_agreement"] == 1.0 and output["cosine"] > MIN_COSINE, output
    assert output["max_abs_error"] > 1e-4
    assert logits.shape == (8, 10) and np.mean(logits.argmax(axis=1) == labels[:8]) >= 7 / 8


def test_onnxruntime_quantized_mnist_on_the_board(emulated_board, tmp_path):
    """A QDQ model from onnxruntime's quantize_static keeps its own scales: built for rpi4, run on the board, it
    agrees with onnxruntime running the same quantized model on the host."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from edgetvm.pipeline.bench_variants import _quantizer_warnings_to_debug
    from edgetvm.pipeline.trained_models import load_calibration_set

    batches = iter([{"image": image[None]} for image in load_calibration_set("mnist-cnn")[:32]])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    model = tmp_path / "mnist-qdq.onnx"
    with _quantizer_warnings_to_debug():
        quantize_static(trained_model_path("mnist-cnn"), model, Reader(), quant_format=QuantFormat.QDQ)
    artifact = tmp_path / "artifact"
    assert main(["-q", "compile", str(model), "-t", "rpi4", "-o", str(artifact)]) == 0
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["quantization"]["source"] == "onnx-qdq" and manifest["quantization"]["integer_layers"] >= 3
    images, labels = load_eval_set("mnist-cnn")
    _, output, logits = _on_the_board(artifact, tmp_path, images[:1], "--reference", str(model))
    assert output["top1_agreement"] == 1.0 and output["cosine"] > MIN_COSINE, output
    assert int(logits.argmax()) == int(labels[0])
