"""A tuning database's records file keeps the latest measurement of each schedule (pipeline.tuning_records)."""

from __future__ import annotations

import json

from edgetvm.pipeline.tuning_records import RECORDS, keep_latest, record_key


def _line(workload: int, trace: list, secs: list[float]) -> str:
    return json.dumps([workload, [trace, secs, {"kind": "llvm"}, []]])


def test_a_schedule_measured_again_keeps_only_its_latest_record_in_place(tmp_path):
    a, b = [["Split", ["l0"], [8]]], [["Split", ["l0"], [16]]]
    lines = [
        _line(0, a, [1e-6]),  # a's first, lucky time
        _line(0, b, [2e-6]),
        _line(1, a, [5e-6]),  # the same trace on another workload is another schedule
        _line(0, a, [3e-6]),  # a timed again beside the others
        "not json",
    ]
    (tmp_path / RECORDS).write_text("\n".join(lines) + "\n")
    assert keep_latest(tmp_path) == 1
    kept = (tmp_path / RECORDS).read_text().splitlines()
    assert kept == lines[1:]  # written back verbatim, in order, the unparseable line too
    assert keep_latest(tmp_path) == 0


def test_nothing_to_drop_leaves_the_file_untouched(tmp_path):
    path = tmp_path / RECORDS
    path.write_text(_line(0, [["A"]], [1e-6]) + "\n")
    before = path.stat().st_mtime_ns
    assert keep_latest(tmp_path) == 0
    assert path.stat().st_mtime_ns == before
    assert keep_latest(tmp_path / "missing") == 0


def test_the_key_ignores_json_key_order_but_not_decisions():
    first = json.dumps([0, [[{"a": 1, "b": 2}], [1e-6]]])
    same = json.dumps([0, [[{"b": 2, "a": 1}], [9e-6]]])
    other = json.dumps([0, [[{"a": 1, "b": 3}], [1e-6]]])
    assert record_key(first) == record_key(same) != record_key(other)
    assert record_key("[1, 2") is None
