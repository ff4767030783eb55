"""Default schedules on whole models: every fused function of real CNNs gets one, and results still match."""

import json

import pytest

from edgetvm.cli import main
from edgetvm.pipeline.package import Package


@pytest.mark.parametrize("model", ["blazeface", "ppocr-cls", "ops-zoo"])
def test_every_function_of_a_real_model_is_scheduled(artifacts, model):
    schedules = Package.load(artifacts(model, "x86")).manifest["schedules"]
    assert schedules["naive"] == [], schedules["naive"]
    assert schedules["rules"].get("reduction-tile", 0) >= 5
    convs = {name: rule for name, rule in schedules["functions"].items() if "conv2d" in name}
    assert convs and set(convs.values()) == {"reduction-tile"}


def test_ops_zoo_matches_onnxruntime(artifacts, tmp_path):
    report = tmp_path / "cmp.json"
    assert main(["-q", "compare", str(artifacts("ops-zoo", "x86")), "--seed", "2", "--json", str(report)]) == 0
    (output,) = json.loads(report.read_text())["outputs"]
    assert output["max_abs_error"] < 1e-4 and output["cosine"] > 0.99999 and output["top1_agreement"] == 1.0


def test_arm_builds_are_scheduled_too(artifacts):
    for target in ("rpi4", "rpi3"):
        schedules = Package.load(artifacts("ops-zoo", target)).manifest["schedules"]
        assert schedules["naive"] == [] and schedules["rules"]["reduction-tile"] >= 5


def test_compile_prints_the_schedule_report(ops_zoo_path, tmp_path, capsys):
    assert main(["-q", "compile", str(ops_zoo_path), "-t", "x86", "-o", str(tmp_path / "zoo")]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("default schedules:")]
    assert "reduction-tile" in line and line.endswith("naive (TVM's untouched loops): none")
