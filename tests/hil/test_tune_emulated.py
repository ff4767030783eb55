"""edgetvm tune for rpi4 on the emulated board: aarch64 candidates measured over the deploy's SSH-tunnelled RPC.

The emulated board's timings only prove the mechanism (qemu-user), not which schedule is faster on a Pi.
"""

from __future__ import annotations

import json

from edgetvm.cli import main
from edgetvm.pipeline.tuning_records import record_key


def _records(db) -> list[list]:
    (target_dir,) = db.iterdir()
    lines = (target_dir / "database_tuning_record.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_tune_over_rpc_then_compile_with_the_records(board_runtime, one_conv_path, tmp_path):
    db = tmp_path / "db"
    argv = ["-q", "tune", str(one_conv_path), "--target", "rpi4", "--board", "emulated", "--trials", "2"]
    assert main([*argv, "--db", str(db)]) == 0
    (target_dir,) = db.iterdir()
    assert target_dir.name.startswith("rpi4-")
    report = json.loads((target_dir / "tuning.json").read_text())
    assert report["trials"] == 2
    assert all(t["default_ms"] is not None and t["default_ms"] > 0 for t in report["tasks"])  # timed on the board
    records = _records(db)
    # one record per schedule (its latest time): every function's default, and the candidates measured
    assert len({record_key(json.dumps(r)) for r in records}) == len(records)
    assert len(report["tasks"]) < len(records) <= len(report["tasks"]) + 2

    out = tmp_path / "tuned"
    assert main(["-q", "compile", str(one_conv_path), "--target", "rpi4", "--db", str(db), "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["library"]["machine"] == "aarch64"
    assert manifest["tuning"]["records_used"] == len(report["tasks"])
    assert manifest["tuning"]["tasks_untuned"] == []
    assert _records(db) == records  # the compile measured nothing

    # the x86 database is another directory: the rpi4 records are not offered to an x86 compile
    x86 = ["-q", "compile", str(one_conv_path), "--target", "x86", "--db", str(db), "-o", str(tmp_path / "x")]
    assert main(x86) == 2
