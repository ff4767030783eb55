"""Quantized rpi4 builds of the trained MNIST CNN (w8a8-static, w8a8-dynamic) on the emulated board: the int8
kernels for aarch64 give the digit's label and agree with the float model on the host."""

import json

import numpy as np
import pytest

from edgetvm.cli import main
from edgetvm.pipeline.trained_models import calibration_set_path, load_eval_set, trained_model_path

# Measured on the host for the same images: cosine to float above 0.999 for both schemes.
MIN_COSINE = 0.99


@pytest.mark.parametrize("scheme", ["w8a8-static", "w8a8-dynamic"])
def test_quantized_mnist_on_the_board(emulated_board, tmp_path, scheme):
    model = trained_model_path("mnist-cnn")
    calib = ["--calib", str(calibration_set_path("mnist-cnn"))] if scheme == "w8a8-static" else []
    artifact = tmp_path / "artifact"
    assert main(["-q", "compile", str(model), "-t", "rpi4", "--quantize", scheme, *calib, "-o", str(artifact)]) == 0
    images, labels = load_eval_set("mnist-cnn")
    inputs = tmp_path / "digit.npz"
    np.savez(inputs, image=images[:1])
    report_path = tmp_path / "report.json"
    argv = ["-q", "deploy", str(artifact), "--board", "emulated", "--repeat", "2", "--inputs", str(inputs)]
    assert main([*argv, "-o", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    (output,) = report["accuracy"]["outputs"]
    assert report["accuracy"]["reference_runtime"] == "onnxruntime"
    assert output["top1_agreement"] == 1.0 and output["cosine"] > MIN_COSINE, output
    assert output["max_abs_error"] > 1e-4  # the int8 layers ran, not a float build
    with np.load(report_path.with_suffix(".outputs.npz")) as outputs:
        assert int(outputs["logits"].argmax()) == int(labels[0])
