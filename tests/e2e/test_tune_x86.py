"""edgetvm tune on this host: a few trials of a one-conv model, records reused by compile --db, failures kept."""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from edgetvm.cli import main
from edgetvm.errors import BuildError
from edgetvm.pipeline.tuning_records import record_key

TRIALS = 4


def _records(db: Path) -> list[list]:
    (target_dir,) = db.iterdir()
    lines = (target_dir / "database_tuning_record.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _run_secs(record: list) -> list[float]:
    return [float(s) for s in record[1][1]]  # [workload index, [trace, run_secs, target, args_info]]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, one_conv_path):
    """One tuning run of TRIALS trials into a fresh database, with its own temporary directory (``db``'s sibling
    ``tmp``: the builder's worker processes inherit ``TMPDIR``)."""
    model, db = one_conv_path, tmp_path_factory.mktemp("tune") / "db"
    scratch = db.parent / "tmp"
    scratch.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(scratch))
        patch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
        assert main(["-q", "tune", str(model), "--target", "x86", "--trials", str(TRIALS), "--db", str(db)]) == 0
        gc.collect()
    return model, db


def test_tune_leaves_no_candidates_in_the_temporary_directory(tuned):
    """MetaSchedule's own export leaves every candidate in a directory of its own in /tmp, for good."""
    _, db = tuned
    assert not list((db.parent / "tmp").iterdir())


def test_tune_records_defaults_and_candidates(tuned):
    model, db = tuned
    records = _records(db)
    (target_dir,) = db.iterdir()
    report = json.loads((target_dir / "tuning.json").read_text())
    tasks = report["tasks"]
    assert target_dir.name.startswith("x86-")
    assert report["trials"] == TRIALS
    # one record per schedule, with its latest time: every task's default, and the candidates of the search
    keys = [record_key(json.dumps(r)) for r in records]
    assert len(set(keys)) == len(keys)
    assert len(tasks) < len(records) <= len(tasks) + TRIALS
    assert all(t["default_ms"] is not None and t["default_ms"] > 0 for t in tasks)
    assert all(t["best_ms"] <= t["default_ms"] for t in tasks)  # the default stays the floor
    assert any(t["rule"] == "reduction-tile" for t in tasks)
    # a function whose best is not its default was timed again beside it, both twice, in one batch
    confirmation = report["confirmation"]
    for task in tasks:
        if task["best_ms"] < task["default_ms"]:
            assert task["name"] in confirmation["re_timed"]
    assert not confirmation["unconfirmed"]
    # four timings per winner and round; a round that confirms the runner-up of a dropped winner adds four more
    assert confirmation["candidates"] % 4 == 0
    assert confirmation["candidates"] >= 4 * len(confirmation["re_timed"])


def test_compile_with_the_database_applies_its_records(tuned, tmp_path):
    model, db = tuned
    before = _records(db)
    out = tmp_path / "tuned"
    assert main(["-q", "compile", str(model), "--target", "x86", "--db", str(db), "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    tuning = manifest["tuning"]
    (target_dir,) = db.iterdir()
    assert tuning["db"] == str(target_dir.resolve())
    assert tuning["records_used"] >= 1 and tuning["tasks_untuned"] == []
    functions = manifest["schedules"]["functions"]
    assert set(tuning["applied_ms"]) <= {f for f, rule in functions.items() if rule == "prescheduled"}
    assert _records(db) == before  # compiling tunes nothing

    again = tmp_path / "again"
    assert main(["-q", "compile", str(model), "--target", "x86", "--db", str(db), "-o", str(again)]) == 0
    assert json.loads((again / "manifest.json").read_text())["tuning"]["applied_ms"] == tuning["applied_ms"]

    # the tuned build computes what onnxruntime computes
    compare = tmp_path / "compare.json"
    assert main(["-q", "compare", str(out), "--json", str(compare)]) == 0
    assert all(o["cosine"] > 0.9999 for o in json.loads(compare.read_text())["outputs"])


def test_a_second_tune_continues_from_the_records(tuned, tmp_path):
    model, db = tuned
    before = {record_key(json.dumps(r)) for r in _records(db)}
    assert main(["-q", "tune", str(model), "--target", "x86", "--trials", "2", "--db", str(db)]) == 0
    after = {record_key(json.dumps(r)) for r in _records(db)}
    # defaults are not seeded again and no schedule is measured as new twice: the two trials add at most two
    assert before <= after and len(after - before) <= 2


def test_candidates_are_timed_on_the_targets_threads():
    """MetaSchedule's LocalRunner worker left alone has half the hardware threads on x86 (1 of 2 here), and
    ranked serial candidates above the parallel defaults that run faster in the model."""
    from edgetvm.pipeline.runtime_threads import tvm_thread_count
    from edgetvm.pipeline.tune import local_measurer
    from edgetvm.targets import resolve_target

    target = resolve_target("x86")
    runner = local_measurer(target).runner
    assert runner.pool.submit(tvm_thread_count).result() == target.threads


def test_a_winner_timed_on_a_lucky_moment_is_timed_again_beside_the_default(tuned, tmp_path):
    """A record whose time is far better than its schedule runs (as one measured on a quiet host would be)
    is re-timed beside the default; the database then ranks it by that time, not the lucky one."""
    from tvm.s_tir import meta_schedule as ms

    from edgetvm.kernels_schedules.cpu_rules import schedule_function
    from edgetvm.pipeline import tile_climb
    from edgetvm.pipeline.ingest import load_model
    from edgetvm.pipeline.tune import confirm_winners, json_database, local_measurer, target_db_dir, tuning_tasks
    from edgetvm.targets import resolve_target

    model, seeded = tuned
    db = tmp_path / "db"
    shutil.copytree(seeded, db)
    target = resolve_target("x86")
    work_dir = target_db_dir(db, target)
    tasks = tuning_tasks(load_model(model), target)
    for t in tasks:
        t.default = schedule_function(t.mod["main"], target.tvm_target())[0].trace
    task = next(t for t in tasks if tile_climb.decisions(t.default))
    lucky = tile_climb.neighbours(task.default)[0]
    database = json_database(work_dir)
    workload = database.commit_workload(task.mod)
    args_info = ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])
    database.commit_tuning_record(ms.database.TuningRecord(lucky, workload, [1e-9], target.tvm_target(), args_info))
    database, done = confirm_winners(work_dir, tasks, target.tvm_target(), local_measurer(target))
    assert task.name in done.re_timed and task.name not in done.unconfirmed
    times = [float(s) for r in database.get_top_k(workload, 1 << 20) for s in r.run_secs]
    assert 1e-9 not in times  # the lucky time is gone: every schedule ranks by its latest time
    # Timed twice in the batch (default, winner, winner, default). Which record ranks first is the host's noise:
    # a candidate timed once by the seeding tune may beat both re-timings.
    assert [r for r in database.get_top_k(workload, 1 << 20) if len(r.run_secs) == 2]


def test_failed_candidates_are_recorded_as_failures_and_defaults_stay(tuned, tmp_path):
    from tvm.s_tir import meta_schedule as ms

    from edgetvm.pipeline.ingest import load_model
    from edgetvm.pipeline.tune import Measurer, TuneOptions, local_measurer, tune_model
    from edgetvm.targets import resolve_target

    model, seeded = tuned
    db = tmp_path / "db"
    shutil.copytree(seeded, db)
    target = resolve_target("x86")
    good = local_measurer(target)
    # a build deadline nothing meets (set after the builder's start-up check): every candidate fails to build
    builder = ms.builder.LocalBuilder(max_workers=1)
    builder.timeout_sec = 1e-3
    failing = Measurer(builder, good.runner)
    with pytest.raises(BuildError, match="every one of the 2 candidates failed"):
        tune_model(load_model(model), target, TuneOptions(2, db), failing)
    records = _records(db)
    failed = [r for r in records if min(_run_secs(r)) >= 1e9]
    assert len(failed) == 2  # stored, as failures (1e10 s), not as fast
    out = tmp_path / "out"
    assert main(["-q", "compile", str(model), "--target", "x86", "--db", str(db), "-o", str(out)]) == 0
    applied = json.loads((out / "manifest.json").read_text())["tuning"]["applied_ms"]
    assert applied and all(ms_ < 1e6 for ms_ in applied.values())


def test_a_function_meta_schedule_cannot_search_keeps_its_default(tmp_path):
    """A conv whose epilogue adds a channel-padded residual (BlazeFace's blocks): MetaSchedule's rules refuse it
    ("requires all the producer(s) ... under the target loop"), which used to abort the whole tune."""
    import dataclasses

    import numpy as np
    from tvm import relax

    from edgetvm.pipeline.ingest import ImportedModel
    from edgetvm.pipeline.tune import TuneOptions, local_measurer, tune_model
    from edgetvm.targets import resolve_target

    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 16, 16, 48], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w = relax.const(rng.standard_normal((1, 1, 48, 56)).astype("float32"))
            conv = bb.emit(relax.op.nn.conv2d(x, w, data_layout="NHWC", kernel_layout="HWIO"))
            conv = bb.emit(relax.op.add(conv, relax.const(rng.standard_normal((56,)).astype("float32"))))
            skip = bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, 0, 0, 0, 8]))
            block = bb.emit(relax.op.nn.relu(relax.op.add(skip, conv)))
            w2 = relax.const(rng.standard_normal((1, 1, 56, 16)).astype("float32"))
            out = bb.emit_output(relax.op.nn.conv2d(block, w2, data_layout="NHWC", kernel_layout="HWIO"))
        bb.emit_func_output(out)
    fields = {f.name: None for f in dataclasses.fields(ImportedModel)}
    imported = ImportedModel(**{**fields, "path": "residual-pad.onnx", "mod": bb.get()})
    host = resolve_target("x86")  # pinned to AVX2, whose vectors decide which convs get padded channels
    target = dataclasses.replace(host, llvm={**host.llvm, "mcpu": "znver3"})
    report = tune_model(imported, target, TuneOptions(2, tmp_path / "db"), local_measurer(target))
    refused = [r.name for r in report.tasks if r.error and "no design space" in r.error]
    assert len(refused) == 1 and len(report.tasks) == 2, [(r.name, r.error) for r in report.tasks]
    # Its default tiles may still climb (one trial of the two, if it is the hotter); the other function was
    # searched by MetaSchedule, and its trials are counted as its own (MetaSchedule's task ids count the searched
    # tasks only).
    trials = {r.name: r.trials for r in report.tasks}
    assert report.trials == 2 and sum(trials.values()) == 2
    assert trials[refused[0]] <= 1
    assert "no design space" in next(r.error for r in report.tasks if r.name in refused)


def test_bench_with_a_database_names_a_build_it_has_no_records_for_as_not_tuned(tuned, tmp_path, capsys):
    """A "+tuned" row whose functions have no record (an int8 build's kernels, when only the float model was
    tuned) would time the default schedules under a tuned name: it says what to run instead."""
    model, db = tuned
    argv = ["-q", "bench", str(model), "--repeat", "1", "--warmup", "0", "--settle-ms", "0", "--json"]
    assert main([*argv, "--db", str(db), "-o", str(tmp_path / "bench")]) == 0
    rows = {r["variant"]: r for r in json.loads(capsys.readouterr().out)["results"] if r["runtime"] == "edgetvm"}
    assert rows["none+tuned"]["error"] is None and rows["none+tuned"]["latency_ms"]["median"] > 0

    other = tmp_path / "other-db"
    shutil.copytree(db, other)
    (records,) = other.glob("*/database_tuning_record.json")
    records.write_text("")  # a database of another model: no record fits
    assert main([*argv, "--db", str(other), "-o", str(tmp_path / "bench2")]) == 0
    rows = {r["variant"]: r for r in json.loads(capsys.readouterr().out)["results"] if r["runtime"] == "edgetvm"}
    assert rows["none"]["error"] is None
    assert rows["none+tuned"]["error"].startswith("not tuned: ")
    assert f"edgetvm tune --db {other}" in rows["none+tuned"]["error"]


def test_pooling_tasks_get_meta_schedule_default_rules_without_a_warning(capfd):
    """TOPI's pooling blocks name a custom rule ("meta_schedule.pool_max") that MetaSchedule has no CPU version
    of: it printed three lines of warning per pooling task on the console of every tune, then applied its
    default rules, as edgetvm's fallback now does quietly."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from edgetvm.pipeline.tune import design_space
    from edgetvm.targets import resolve_target

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 16, 16, 8], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.max_pool2d(x, pool_size=[2, 2], strides=[2, 2], layout="NHWC"))
        bb.emit_func_output(out)
    legalized = relax.transform.LegalizeOps()(bb.get())
    (pool,) = [f for f in legalized.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert '"schedule_rule": "meta_schedule.pool_max"' in pool.script()
    target = resolve_target("x86")
    context = ms.TuneContext(
        mod=tvm.IRModule({"main": pool}),
        target=target.tvm_target(),
        space_generator=design_space(target),
        search_strategy=ms.search_strategy.EvolutionarySearch(),
        task_name="pool",
    )
    spaces = context.generate_design_space()
    assert len(spaces) > 1  # MetaSchedule's own rules applied, beside edgetvm's default schedule
    assert "Unknown schedule rule" not in capfd.readouterr().err
