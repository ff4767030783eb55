"""Budgets on compile and bench through the CLI: a budget that holds exits 0, one that breaks exits 5."""

import json
from xml.etree import ElementTree

from edgetvm.cli import main
from edgetvm.errors import BudgetError


def _compile(ops_zoo_path, tmp_path, *gates):
    return main(["-q", "compile", str(ops_zoo_path), "-t", "x86", "-o", str(tmp_path / "out"), *gates])


def test_compile_budgets_hold_and_break(ops_zoo_path, tmp_path, capsys):
    junit = tmp_path / "gates.xml"
    assert (
        _compile(
            ops_zoo_path, tmp_path, "--max-accuracy-drop", "0.5", "--max-latency-ms", "1000", "--junit", str(junit)
        )
        == 0
    )
    assert ElementTree.parse(junit).getroot().get("failures") == "0"
    capsys.readouterr()
    assert (
        _compile(ops_zoo_path, tmp_path, "--max-latency-ms", "0.000001", "--junit", str(junit)) == BudgetError.exit_code
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "budget broken" in err[0] and "median latency" in err[0]
    assert ElementTree.parse(junit).getroot().get("failures") == "1"
    assert (tmp_path / "out" / "manifest.json").is_file()  # the build itself is fine and kept


def test_compile_budgets_for_a_board_target_are_refused_before_building(ops_zoo_path, tmp_path, capsys):
    code = main(
        ["-q", "compile", str(ops_zoo_path), "-t", "rpi4", "-o", str(tmp_path / "arm"), "--max-latency-ms", "5"]
    )
    assert code == 2 and "edgetvm deploy" in capsys.readouterr().err
    assert not (tmp_path / "arm").exists()


def test_bench_regression_gate_against_its_own_earlier_report(ops_zoo_path, tmp_path):
    first = tmp_path / "first"
    assert (
        main(["-q", "bench", str(ops_zoo_path), "--repeat", "3", "--warmup", "1", "--settle-ms", "0", "-o", str(first)])
        == 0
    )
    baseline = json.loads((first / "bench.json").read_text())
    # A baseline 1000x faster than anything measurable: the new run is a regression.
    for row in baseline["results"]:
        row["latency_ms"]["median"] /= 1000.0
    fast = tmp_path / "fast-baseline.json"
    fast.write_text(json.dumps(baseline))
    args = ["-q", "bench", str(ops_zoo_path), "--repeat", "3", "--warmup", "1", "--settle-ms", "0"]
    code = main([*args, "-o", str(tmp_path / "second"), "--baseline-report", str(fast), "--max-regression", "10%"])
    assert code == BudgetError.exit_code
    code = main(
        [
            *args,
            "-o",
            str(tmp_path / "third"),
            "--baseline-report",
            str(first / "bench.json"),
            "--max-regression",
            "100000%",
        ]
    )
    assert code == 0
