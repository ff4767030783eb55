"""Eval sets: loading and checking (labels included), top-1 answers, scores, and their bench rows and column."""

import numpy as np
import pytest

from edgetvm.errors import InputError
from edgetvm.pipeline.bench import BenchReport, TimingPlan, measure_variants
from edgetvm.pipeline.bench_report import markdown_report, table_rows
from edgetvm.pipeline.bench_variants import Variant
from edgetvm.pipeline.eval_set import answers, load_eval_set, score, top1
from edgetvm.pipeline.tensor_spec import TensorSpec

SPECS = [TensorSpec("x", (1, 3), "float32")]
SAMPLES = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=np.float32)
LABELS = np.array([1, 0, 2, 0])  # the last one is wrong for a model answering argmax(x)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_a_labelled_set_loads_one_sample_per_row(tmp_path):
    data = load_eval_set(_write(tmp_path / "e.npz", x=SAMPLES, label=LABELS), SPECS)
    assert len(data) == 4 and data.samples[2]["x"].shape == (1, 3)
    assert data.labels.tolist() == LABELS.tolist()
    assert len(load_eval_set(tmp_path / "e.npz", SPECS, limit=2)) == 2


def test_labels_are_optional(tmp_path):
    assert load_eval_set(_write(tmp_path / "e.npz", x=SAMPLES), SPECS).labels is None


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": SAMPLES, "label": LABELS[:3]}, "one integer class per sample"),
        ({"x": SAMPLES, "label": LABELS.astype(np.float32)}, "one integer class per sample"),
        ({"image": SAMPLES, "label": LABELS}, "eval set .*the model's inputs are \\['x'\\]"),
        ({"x": SAMPLES * np.nan, "label": LABELS}, "eval set .*NaN or Inf"),
    ],
)
def test_bad_sets_are_input_errors(tmp_path, arrays, message):
    with pytest.raises(InputError, match=message):
        load_eval_set(_write(tmp_path / "e.npz", **arrays), SPECS)


def test_top1_needs_one_row_of_scores():
    assert top1([np.array([[0.1, 0.7, 0.2]])]) == 1
    with pytest.raises(InputError, match="one row of class scores"):
        top1([np.zeros((1, 896, 1))])


def test_scores_count_accuracy_and_agreement(tmp_path):
    data = load_eval_set(_write(tmp_path / "e.npz", x=SAMPLES, label=LABELS), SPECS)
    predicted = answers(lambda inputs: [inputs["x"]], data)
    assert predicted.tolist() == [1, 0, 2, 1]
    scored = score(predicted, data, np.array([1, 0, 0, 1]), "onnxruntime float")
    assert scored["top1_accuracy"] == 0.75 and scored["top1_agreement"] == 0.75 and scored["samples"] == 4


def test_bench_rows_carry_the_eval_scores_and_the_table_shows_them(tmp_path):
    data = load_eval_set(_write(tmp_path / "e.npz", x=SAMPLES, label=LABELS), SPECS)

    def flipped(inputs):  # classes 0 and 2 swap places
        return [inputs["x"][:, ::-1]]

    variants = [
        Variant("onnxruntime", "float", lambda inputs: [inputs["x"]]),
        Variant("edgetvm", "w8a8-static", flipped),
    ]
    rows = measure_variants(variants, {"x": SAMPLES[:1]}, ["y"], TimingPlan(warmup=0, repeat=1), eval_set=data)
    assert rows[0].eval["top1_accuracy"] == 0.75 and rows[0].eval["top1_agreement"] == 1.0
    assert rows[1].eval["top1_agreement"] == 0.5  # samples 1 and 2 answer 2 and 0 instead of 0 and 2
    report = BenchReport(
        model={"path": "m.onnx", "format": "onnx", "inputs": [], "outputs": [], "flops": 0},
        target="x86",
        baseline={"runtime": "onnxruntime", "variant": "float"},
        host={"cpu": "Test CPU", "machine": "x86_64", "cores": 2, "threads": 2, "tvm_threads": 2, "date": "today"},
        timing={"rounds": 1, "warmup_rounds": 0, "inputs": "random, seed 0"},
        roofline={},
        results=rows,
    )
    lines = table_rows(report)
    assert lines[0].endswith("| eval set |")
    assert lines[2].endswith("| top-1 75.0% |") and lines[3].endswith("| top-1 25.0%, agrees 50.0% |")
    assert "eval set: 4 samples of e.npz" in markdown_report(report)
