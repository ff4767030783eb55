"""edgetvm tune for rpi4 through a TVM RPC tracker: candidates are timed on whichever board holds the key.

The emulated board registers with a tracker on 127.0.0.1 as a board of a farm would with the lab's tracker.
"""

from __future__ import annotations

import json
from itertools import pairwise

from edgetvm.cli import main
from edgetvm.deploy.emulated_board import qemu_cpu_env
from edgetvm.pipeline.tuning_records import record_key
from edgetvm.targets import resolve_target

KEY = "rpi4-tune"
TRIALS, PER_ITER, POPULATION = 4, 2, 16


def _records(db) -> list[list]:
    (target_dir,) = db.iterdir()
    lines = (target_dir / "database_tuning_record.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_tune_through_a_tracker_then_compile_with_the_records(
    tracker, board_runtime, ssh, one_conv_path, tmp_path, board_on_tracker, board_processes
):
    db = tmp_path / "db"
    target = resolve_target("rpi4")
    env = {"TVM_NUM_THREADS": str(target.threads), **qemu_cpu_env(target)}  # the board runs as a Cortex-A72
    argv = ["-q", "tune", str(one_conv_path), "-t", "rpi4", "--rpc-tracker", tracker, "--rpc-key", KEY]
    argv += ["--trials", str(TRIALS), "--trials-per-iter", str(PER_ITER), "--population", str(POPULATION)]
    with board_on_tracker(ssh, tracker, KEY, env) as run_dir:
        assert main([*argv, "--db", str(db)]) == 0
        sessions = ssh.run(f"grep -c 'finish serving' {run_dir}/server.log", check=False).stdout.strip()
    assert board_processes(ssh) == []

    (target_dir,) = db.iterdir()
    assert target_dir.name.startswith("rpi4-")
    report = json.loads((target_dir / "tuning.json").read_text())
    assert (report["trials"], report["trials_per_iter"], report["population"]) == (TRIALS, PER_ITER, POPULATION)
    assert all(t["default_ms"] is not None and t["default_ms"] > 0 for t in report["tasks"])  # timed on the board
    assert sum(t["failures"] for t in report["tasks"]) < TRIALS
    records = _records(db)
    # one record per schedule (its latest time): every function's default, and the candidates measured
    assert len({record_key(json.dumps(r)) for r in records}) == len(records)
    assert len(report["tasks"]) < len(records) <= len(report["tasks"]) + TRIALS
    # one RPC session per measurement (the defaults, the candidates, the winners timed again beside the
    # defaults), each served by the board's server
    measurements = len(report["tasks"]) + TRIALS + report["confirmation"]["candidates"]
    assert int(sessions or 0) >= measurements
    # the candidates came in batches of at most --trials-per-iter
    measured = [0] + [trials for trials, _, _ in report["history"]]
    assert measured[-1] == TRIALS and all(0 < b - a <= PER_ITER for a, b in pairwise(measured))

    out = tmp_path / "tuned"
    assert main(["-q", "compile", str(one_conv_path), "-t", "rpi4", "--db", str(db), "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["library"]["machine"] == "aarch64"
    assert manifest["tuning"]["db"] == str(target_dir.resolve())
    assert manifest["tuning"]["records_used"] == len(report["tasks"])
    assert manifest["tuning"]["tasks_untuned"] == []
    assert _records(db) == records  # the compile measured nothing


def test_tune_with_a_key_no_board_holds(tracker, one_conv_path, tmp_path, capsys):
    argv = ["-q", "tune", str(one_conv_path), "-t", "rpi4", "--rpc-tracker", tracker, "--rpc-key", "no-such-key"]
    assert main([*argv, "--trials", "2", "--db", str(tmp_path / "db")]) == 4
    assert f"RPC tracker {tracker} has no board with key 'no-such-key'" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()
