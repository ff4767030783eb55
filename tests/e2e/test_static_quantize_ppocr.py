"""The PP-OCR classifier compiled with --quantize w8a8-static, calibrated on rendered text lines, against
onnxruntime's float run on other rendered lines (``pipeline.text_lines``): the issue's 98% top-1 agreement."""

import numpy as np
import pytest

from edgetvm.cli import main
from edgetvm.pipeline.package import Package

# The target. Measured: 199/200 (99.5%) agreement, the float model reads 98% of the lines right.
MIN_AGREEMENT = 0.98
# Cosine over 32 lines, measured mean 0.999 and lowest 0.975 (a two-class softmax near a tie); a wrong scale gives
# far below 0.9.
MIN_MEAN_COSINE = 0.99
MIN_COSINE = 0.95


@pytest.fixture(scope="module")
def static_artifact(tmp_path_factory, ppocr_cls_path, ppocr_text_lines):
    out = tmp_path_factory.mktemp("ppocr-static") / "x86"
    argv = ["-q", "compile", str(ppocr_cls_path), "--input-shape", "x=1x3x48x192", "--target", "x86"]
    calib = str(ppocr_text_lines.data.calibration_set)
    assert main([*argv, "--quantize", "w8a8-static", "--calib", calib, "-o", str(out)]) == 0
    return out


def test_float_model_reads_the_rendered_lines(ppocr_text_lines):
    """The eval set is what the classifier is for: onnxruntime's float run gets the orientation right."""
    accuracy = (ppocr_text_lines.float_answers == ppocr_text_lines.eval_set.labels).mean()
    assert accuracy >= 0.95, accuracy


def test_static_build_agrees_with_onnxruntime_float(static_artifact, ppocr_text_lines):
    package = Package.load(static_artifact)
    assert package.manifest["quantization"]["calibration_samples"] == 32
    assert package.manifest["schedules"]["naive"] == []
    agreement, cosines, errors = ppocr_text_lines.against_float(static_artifact)
    assert agreement >= MIN_AGREEMENT, agreement
    assert np.mean(cosines) > MIN_MEAN_COSINE and min(cosines) > MIN_COSINE, cosines
    assert max(errors) > 1e-3, errors  # the int8 layers ran
