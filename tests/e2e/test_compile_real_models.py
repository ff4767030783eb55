"""Real models from PyPI wheels compiled for x86, rpi4 and rpi3, checked against their own runtimes."""

import json

import numpy as np
import pytest

from edgetvm.cli import main
from edgetvm.pipeline.package import Package, elf_machine

# Tolerances: float32 builds of the same graph differ from onnxruntime/tflite-runtime only by operation order
# (observed: 1.2e-7 on the classifier's softmax, 9e-5 on BlazeFace's unbounded regressors).
MAX_ABS_ERROR = {"blazeface": 1e-3, "ppocr-cls": 1e-4}


@pytest.mark.parametrize(
    "model, target, machine",
    [
        ("blazeface", "x86", "x86_64"),
        ("blazeface", "rpi4", "aarch64"),
        ("ppocr-cls", "x86", "x86_64"),
        ("ppocr-cls", "rpi4", "aarch64"),
        ("ppocr-cls", "rpi3", "armv7l"),
    ],
)
def test_library_is_an_elf_for_the_target(artifacts, model, target, machine):
    package = Package.load(artifacts(model, target))
    assert elf_machine(package.library_path) == machine
    manifest = package.manifest
    assert manifest["format_version"] == 1
    assert manifest["target"]["name"] == target
    assert manifest["quantization"] == "none"
    assert manifest["tvm_version"].startswith("0.27")
    assert len(manifest["model"]["sha256"]) == 64 and len(manifest["library"]["sha256"]) == 64
    assert manifest["inputs"] and manifest["outputs"]


def test_ppocr_manifest_records_fixed_shapes(artifacts):
    manifest = Package.load(artifacts("ppocr-cls", "x86")).manifest
    assert manifest["inputs"] == [{"name": "x", "shape": [1, 3, 48, 192], "dtype": "float32"}]
    assert manifest["outputs"][0]["shape"] == [1, 2]
    assert manifest["model"]["input_shapes"] == {"x": [1, 3, 48, 192]}


@pytest.mark.parametrize("model", ["blazeface", "ppocr-cls"])
def test_x86_artifact_matches_the_framework_runtime(artifacts, tmp_path, model):
    out = artifacts(model, "x86")
    report = tmp_path / "cmp.json"
    assert main(["-q", "compare", str(out), "--seed", "1", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["reference_runtime"] == ("tflite-runtime" if model == "blazeface" else "onnxruntime")
    for output in result["outputs"]:
        assert output["max_abs_error"] < MAX_ABS_ERROR[model], output
        assert output["cosine"] > 0.9999, output
    if model == "ppocr-cls":  # a classifier: its class must not change (BlazeFace's outputs are boxes and scores)
        assert result["outputs"][0]["top1_agreement"] == 1.0


def test_run_writes_outputs_and_checks_inputs(artifacts, tmp_path, capsys):
    out = artifacts("ppocr-cls", "x86")
    inputs = tmp_path / "in.npz"
    x = np.random.default_rng(0).random((1, 3, 48, 192), dtype=np.float32)
    np.savez(inputs, x=x)
    result = tmp_path / "out.npz"
    assert main(["-q", "run", str(out), "--inputs", str(inputs), "-o", str(result)]) == 0
    with np.load(result) as data:
        probs = data[data.files[0]]
    assert probs.shape == (1, 2) and abs(float(probs.sum()) - 1.0) < 1e-5
    np.savez(inputs, x=np.zeros((1, 3, 48, 100), np.float32))
    capsys.readouterr()
    assert main(["run", str(out), "--inputs", str(inputs), "-o", str(result)]) == 2
    err = capsys.readouterr().err
    assert "input 'x' has shape [1, 3, 48, 100], expected [1, 3, 48, 192]" in err and len(err.splitlines()) == 1


def test_cross_compiled_artifact_is_refused_locally(artifacts, tmp_path, capsys):
    assert main(["run", str(artifacts("ppocr-cls", "rpi4")), "-o", str(tmp_path / "o.npz")]) == 2
    assert "built for rpi4" in capsys.readouterr().err
