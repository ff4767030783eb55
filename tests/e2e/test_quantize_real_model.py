"""The PP-OCR classifier compiled with --quantize w8a8-dynamic, against onnxruntime's float run on rendered text
lines (``pipeline.text_lines``)."""

import numpy as np
import pytest

from edgetvm.cli import main
from edgetvm.pipeline.package import Package, elf_machine

SHAPE = ["--input-shape", "x=1x3x48x192"]
# The target for both int8 schemes: 98% top-1 agreement with float. Measured on the 200 rendered lines:
# 197 (98.5%). Cosines of the two-class softmax outputs over 32 lines: mean and lowest bounds as for the static
# build (a line near a tie moves most); a wrong layer scale fails both.
MIN_TOP1_AGREEMENT = 0.98
MIN_MEAN_COSINE = 0.99
MIN_COSINE = 0.95


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, ppocr_cls_path):
    """Compile on first use: ``quantized(target)`` -> artifact directory."""
    root = tmp_path_factory.mktemp("quantized")
    built = {}

    def get(target: str):
        if target not in built:
            out = root / target
            argv = ["-q", "compile", str(ppocr_cls_path), *SHAPE, "--target", target, "--quantize", "w8a8-dynamic"]
            assert main([*argv, "-o", str(out)]) == 0
            built[target] = out
        return built[target]

    return get


def test_manifest_records_the_scheme(quantized):
    quantization = Package.load(quantized("x86")).manifest["quantization"]
    assert quantization["name"] == "w8a8-dynamic"
    assert quantization["weight_bits"] == 8 and quantization["weight_granularity"] == "per-channel"
    assert quantization["symmetric"] is True and quantization["activation_mode"] == "dynamic"
    assert quantization["calibration"] is None


def test_x86_int8_build_agrees_with_onnxruntime_float(quantized, ppocr_text_lines):
    agreement, cosines, errors = ppocr_text_lines.against_float(quantized("x86"))
    assert agreement >= MIN_TOP1_AGREEMENT, agreement
    assert np.mean(cosines) > MIN_MEAN_COSINE and min(cosines) > MIN_COSINE, cosines
    assert max(errors) > 1e-3, errors  # the float build differs by 1e-7: this proves the int8 layers ran


def test_rpi4_int8_build_is_aarch64(quantized):
    package = Package.load(quantized("rpi4"))
    assert elf_machine(package.library_path) == "aarch64"
    assert package.manifest["quantization"]["name"] == "w8a8-dynamic"


def test_schemes_command_and_unknown_scheme(ppocr_cls_path, tmp_path, capsys):
    assert main(["schemes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["none", "w8a8-dynamic", "w8a8-static"]
    argv = ["compile", str(ppocr_cls_path), *SHAPE, "--target", "x86", "--quantize", "w4a4", "-o", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        "unknown quantization scheme 'w4a4'; known schemes: none, w8a8-dynamic, w8a8-static" in err
        and len(err.splitlines()) == 1
    )
    assert not (tmp_path / "o").exists()
