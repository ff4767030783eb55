"""Bench rows from fake variants (numpy functions): accuracy against the reference, error rows, report files."""

import numpy as np
import pytest

from edgetvm.pipeline.bench import BenchReport, BenchRow, TimingPlan, add_ratios, measure_variants
from edgetvm.pipeline.bench_report import markdown_report, plot_report, table_rows
from edgetvm.pipeline.bench_variants import Variant
from edgetvm.pipeline.host_facts import cpu_model

INPUTS = {"x": np.random.default_rng(0).random((4, 10), dtype=np.float32)}


def _scores(inputs):
    return [inputs["x"] * 2.0]


def _noisy_scores(inputs):
    return [inputs["x"] * 2.0 + 0.01]


def _broken_at_run(inputs):
    raise RuntimeError("Non-zero status code returned while running ConvInteger node.\nNOT_IMPLEMENTED")


def _variants():
    return [
        Variant("onnxruntime", "float", _scores),
        Variant("onnxruntime", "quantize_dynamic", _broken_at_run),
        Variant("onnxruntime", "quantize_static", error="Fail: cannot calibrate"),
        Variant("edgetvm", "none", _scores, {"artifact": "builds/none"}),
        Variant("edgetvm", "w8a8-dynamic", _noisy_scores),
    ]


@pytest.fixture(scope="module")
def rows():
    rows = measure_variants(_variants(), INPUTS, ["y"], TimingPlan(warmup=1, repeat=4))
    add_ratios(rows, flops=2_000_000, sgemm_gflops=100.0)
    return rows


def test_one_row_per_variant_in_order(rows):
    assert [(r.runtime, r.variant) for r in rows] == [(v.runtime, v.variant) for v in _variants()]


def test_measured_rows_have_consistent_latency(rows):
    for row in (rows[0], rows[3], rows[4]):
        assert row.error is None
        assert row.latency_ms["n"] == 4 == len(row.samples_ms)
        assert row.latency_ms["p90"] >= row.latency_ms["median"] > 0
    assert rows[0].ratio_to_baseline == 1.0
    assert rows[3].gflops == pytest.approx(2e6 / (rows[3].latency_ms["median"] / 1e3) / 1e9)
    assert rows[3].roofline_fraction == pytest.approx(rows[3].gflops / 100.0)


def test_accuracy_is_against_the_first_variant(rows):
    assert rows[3].accuracy["reference"] == "onnxruntime float"
    assert rows[3].accuracy["min_cosine"] == pytest.approx(1.0) and rows[3].accuracy["max_abs_error"] == 0.0
    assert rows[4].accuracy["max_abs_error"] == pytest.approx(0.01, rel=1e-3)
    assert rows[4].accuracy["top1_agreement"] == 1.0
    assert rows[4].accuracy["outputs"][0]["name"] == "y"


def test_failing_baselines_are_error_rows(rows):
    run_failure, build_failure = rows[1], rows[2]
    assert run_failure.error == "failed on the first run: RuntimeError: NOT_IMPLEMENTED"
    assert build_failure.error == "Fail: cannot calibrate"
    for row in (run_failure, build_failure):
        assert row.latency_ms is None and row.ratio_to_baseline is None and row.samples_ms == []


def test_a_reference_that_cannot_run_is_an_input_error():
    from edgetvm.errors import InputError

    with pytest.raises(InputError, match="reference run"):
        measure_variants([Variant("onnxruntime", "float", error="bad model")], INPUTS, ["y"], TimingPlan())


def test_variant_needs_a_run_or_an_error():
    with pytest.raises(ValueError, match="exactly one"):
        Variant("edgetvm", "none")
    with pytest.raises(ValueError, match="runtime"):
        Variant("tensorflow", "float", _scores)


def _report(rows):
    return BenchReport(
        model={
            "path": "/models/tiny.onnx",
            "sha256": "0" * 64,
            "format": "onnx",
            "input_shapes": {},
            "inputs": [{"name": "x", "shape": [4, 10], "dtype": "float32"}],
            "outputs": [{"name": "y", "shape": [4, 10], "dtype": "float32"}],
            "flops": 2_000_000,
        },
        target="x86",
        baseline={"runtime": "onnxruntime", "variant": "float"},
        host={"cpu": "Test CPU", "machine": "x86_64", "cores": 2, "threads": 2, "tvm_threads": 2, "date": "today"},
        timing={"rounds": 4, "warmup_rounds": 1, "inputs": "random, seed 0"},
        roofline={"gflops": 100.0, "size": 1024, "threads": 2, "blas": "openblas"},
        results=rows,
    )


def test_report_round_trips_through_json(rows, tmp_path):
    _report(rows).save(tmp_path)
    loaded = BenchReport.load(tmp_path)
    assert loaded.results == rows and loaded.baseline_label == "onnxruntime float"


def test_markdown_table(rows):
    lines = table_rows(_report(rows))
    assert lines[0].startswith("| runtime | variant | median ms | p90 ms | ratio to onnxruntime float |")
    assert len(lines) == 2 + len(rows)
    assert lines[2].endswith("| reference |")
    assert "| onnxruntime | quantize_dynamic | — | — | — | — | failed: " in lines[3]
    assert "top-1 100%, cosine 1.000000" in lines[5]
    assert "100.0 GFLOP/s" in markdown_report(_report(rows))


def test_plot_is_a_png(rows, tmp_path):
    plot_report(_report(rows), tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cpu_model_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\nprocessor\t: 1\n")
    assert cpu_model(x86) == "AMD EPYC 7B13"
    pi = tmp_path / "pi"
    pi.write_text("processor\t: 0\nBogoMIPS\t: 108.00\n\nHardware\t: BCM2835\nModel\t: Raspberry Pi 4 Model B\n")
    assert cpu_model(pi) == "Raspberry Pi 4 Model B"


def test_row_label():
    assert BenchRow("edgetvm", "w8a8-dynamic").label == "edgetvm w8a8-dynamic"


def _host_reference():
    return Variant("onnxruntime", "float on the host", _scores, {"where": "host"})


def _board_report(emulated: bool):
    rows = measure_variants(
        _variants()[:1] + _variants()[4:], INPUTS, ["y"], TimingPlan(1, 3), reference=_host_reference()
    )
    add_ratios(rows, flops=2_000_000, sgemm_gflops=None)
    report = _report(rows)
    report.roofline = {"model_flops": 2_000_000, "note": "no sgemm roof measured on a board"}
    report.board = {
        "name": "emulated" if emulated else "kitchen-pi",
        "emulated": emulated,
        "cpu": "Raspberry Pi 4 Model B",
        "machine": "aarch64",
        "cores": 4,
        "os": "Debian GNU/Linux 12 (bookworm)",
        "threads": 4,
        "versions": {"tvm": "0.27.0", "onnxruntime": "1.32.0", "tflite-runtime": None},
        "date": "today",
    }
    return report


def test_on_a_board_every_row_is_compared_with_the_hosts_float_run():
    report = _board_report(emulated=False)
    baseline, edgetvm = report.results
    assert baseline.accuracy["reference"] == edgetvm.accuracy["reference"] == "onnxruntime float on the host"
    lines = table_rows(report)
    assert lines[0].endswith("| accuracy vs onnxruntime float on the host |")
    assert "reference" not in lines[2] and "cosine 1.000000" in lines[2]  # the board's own float run is measured
    assert not any("mulated" in line for line in lines)


def test_an_emulated_boards_numbers_say_so_everywhere(tmp_path):
    report = _board_report(emulated=True)
    caption = table_rows(report)[0]
    assert caption.startswith("**Emulated board** (Raspberry Pi 4 Model B)") and "qemu-user" in caption
    text = markdown_report(report)
    assert "- board: emulated, Raspberry Pi 4 Model B (aarch64, 4 cores" in text
    assert "EMULATED (qemu-user on the host: not hardware timings)" in text
    assert "- on the board: tvm 0.27.0, onnxruntime 1.32.0\n" in text
    assert "- roofline: no sgemm roof measured on a board" in text
    report.save(tmp_path)
    assert BenchReport.load(tmp_path).board["emulated"] is True
    plot_report(report, tmp_path / "bench.png")


def test_sub_tenth_of_a_millisecond_medians_keep_three_decimals(rows):
    from dataclasses import replace

    def first_line(median, p90):
        timed = replace(rows[0], latency_ms={**rows[0].latency_ms, "median": median, "p90": p90})
        return table_rows(_report([timed, *rows[1:]]))[2]

    assert first_line(0.0374, 0.0485).startswith("| onnxruntime | float | 0.037 | 0.049 |")
    assert first_line(1.234, 1.5).startswith("| onnxruntime | float | 1.23 | 1.50 |")
