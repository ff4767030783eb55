"""Build-step gates (pipeline/gates.py): budgets, baselines, JUnit XML."""

import json
from xml.etree import ElementTree

import pytest

from edgetvm.errors import BudgetError, InputError
from edgetvm.pipeline.gates import (
    Budget,
    Measurement,
    accuracy_drop,
    bench_measurements,
    check,
    enforce,
    parse_regression,
)

CLASSES = [{"name": "logits", "cosine": 0.999, "top1_agreement": 0.97, "max_abs_error": 0.1}]
BOXES = [{"name": "boxes", "cosine": 0.995, "top1_agreement": None, "max_abs_error": 2.0}]


def test_accuracy_drop_uses_top1_for_classes_and_cosine_otherwise():
    assert accuracy_drop(CLASSES) == pytest.approx(3.0)
    assert accuracy_drop(BOXES) == pytest.approx(0.5)
    assert accuracy_drop(CLASSES + BOXES) == pytest.approx(3.0)  # the worst output


def test_budgets_that_hold_and_budgets_that_break():
    m = Measurement("build", "edgetvm:none", 12.0, CLASSES)
    assert all(r.passed for r in check(Budget(max_accuracy_drop=3.5, max_latency_ms=12.5), [m]))
    broken = [r for r in check(Budget(max_accuracy_drop=2.0, max_latency_ms=10.0), [m]) if not r.passed]
    assert [r.gate for r in broken] == ["accuracy", "latency"]
    with pytest.raises(BudgetError, match=r"accuracy drop 3.000 points .* \(and 1 more broken gate") as err:
        enforce(Budget(max_accuracy_drop=2.0, max_latency_ms=10.0), [m])
    assert err.value.exit_code == 5


def test_regression_against_a_deploy_report_and_a_bench_json(tmp_path):
    deploy = tmp_path / "report.json"
    deploy.write_text(json.dumps({"latency_ms": {"median": 10.0}}))
    bench = tmp_path / "bench.json"
    rows = [{"runtime": "edgetvm", "variant": "none", "latency_ms": {"median": 4.0}}]
    bench.write_text(json.dumps({"results": rows}))
    budget = Budget(baseline_report=deploy, max_regression=0.10)
    assert check(budget, [Measurement("d", "deploy", 10.9, None)])[0].passed
    assert not check(budget, [Measurement("d", "deploy", 11.2, None)])[0].passed
    budget = Budget(baseline_report=bench, max_regression=0.10)
    assert not check(budget, [Measurement("b", "edgetvm:none", 4.5, None)])[0].passed
    missing = check(budget, [Measurement("b", "edgetvm:w8a8-dynamic", 1.0, None)])[0]
    assert not missing.passed and "not in the baseline" in missing.message


def test_bad_budget_options_are_input_errors(tmp_path):
    assert parse_regression("10%") == pytest.approx(0.10) and parse_regression("2.5") == pytest.approx(0.025)
    with pytest.raises(InputError, match="percentage"):
        parse_regression("ten")
    with pytest.raises(InputError, match="go together"):
        Budget(max_regression=0.1)
    with pytest.raises(InputError, match="negative"):
        Budget(max_latency_ms=-1)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(InputError, match="neither a deploy report nor a bench.json"):
        check(Budget(baseline_report=bad, max_regression=0.1), [Measurement("d", "deploy", 1.0, None)])


def test_junit_records_every_gate(tmp_path):
    junit = tmp_path / "gates.xml"
    with pytest.raises(BudgetError):
        enforce(Budget(max_accuracy_drop=5.0, max_latency_ms=1.0), [Measurement("b", "k", 2.0, BOXES)], junit)
    suite = ElementTree.parse(junit).getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    failed = [case.get("classname") for case in suite if case.find("failure") is not None]
    assert failed == ["edgetvm-gates.latency"]


def test_bench_measurements_are_the_edgetvm_rows():
    report = {
        "results": [
            {"runtime": "onnxruntime", "variant": "float", "latency_ms": {"median": 1.0}, "accuracy": None},
            {"runtime": "edgetvm", "variant": "none", "latency_ms": {"median": 1.2}, "accuracy": {"outputs": BOXES}},
            {"runtime": "edgetvm", "variant": "w8a8-dynamic", "latency_ms": None, "error": "build failed"},
        ]
    }
    (m,) = bench_measurements(report)
    assert (m.key, m.latency_ms, m.accuracy) == ("edgetvm:none", 1.2, BOXES)
