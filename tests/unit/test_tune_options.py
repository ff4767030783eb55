"""edgetvm tune's search options: --population and --trials-per-iter are validated before anything is imported."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetvm.cli import main
from edgetvm.errors import InputError
from edgetvm.pipeline.tune import TuneOptions, TuningTask, hottest_first, search_strategy


def test_defaults_measure_16_per_iteration_or_every_trial_when_fewer():
    assert TuneOptions(64, Path("db")).batch == 16
    assert TuneOptions(4, Path("db")).batch == 4  # the default never exceeds a small budget
    assert TuneOptions(64, Path("db"), trials_per_iter=8).batch == 8
    assert TuneOptions(4, Path("db"), trials_per_iter=4).batch == 4


@pytest.mark.parametrize(
    ("trials_per_iter", "population", "message"),
    [
        (8, 64, "--trials-per-iter must be between 1 and --trials (4), got 8"),
        (0, 64, "--trials-per-iter must be between 1 and --trials (4), got 0"),
        (None, 0, "--population must be at least 1, got 0"),
        (2, -3, "--population must be at least 1, got -3"),
    ],
)
def test_invalid_search_options_are_input_errors(trials_per_iter, population, message):
    with pytest.raises(InputError) as err:
        TuneOptions(4, Path("db"), trials_per_iter, population)
    assert str(err.value) == message


def test_the_cli_rejects_them_with_exit_2_before_importing_the_model(tmp_path, capsys):
    argv = ["tune", str(tmp_path / "missing.onnx"), "-t", "x86", "--trials", "4", "--db", str(tmp_path / "db")]
    assert main([*argv, "--trials-per-iter", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["edgetvm tune: error: --trials-per-iter must be between 1 and --trials (4), got 5"]
    assert main([*argv, "--population", "0"]) == 2
    assert "--population must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()


def test_the_population_reaches_the_evolutionary_search():
    strategy = search_strategy(TuneOptions(4, Path("db"), population=24))
    assert (strategy.population_size, strategy.init_min_unmeasured) == (24, 16)
    small = search_strategy(TuneOptions(4, Path("db"), population=8))
    # fewer initial samples than the minimum would end the task's search before it measures anything
    assert (small.population_size, small.init_min_unmeasured) == (8, 8)


def _pairs(*weights: int) -> list:
    return [(TuningTask(f"f{i}", None, weight, "reduction-tile"), f"context{i}") for i, weight in enumerate(weights)]


def test_the_budget_goes_to_the_hottest_functions_two_batches_each():
    pairs = _pairs(1, 1, 4, 1, 2)  # calls per inference
    best_ms = {"f0": 0.5, "f1": 0.01, "f2": 0.1, "f3": None, "f4": 0.3}  # heat: 0.5, 0.01, 0.4, 0, 0.6
    searched, left = hottest_first(pairs, best_ms, TuneOptions(64, Path("db")))  # 64 / (2 x 16): two functions
    assert [task.name for task, _ in searched] == ["f4", "f0"]
    assert [task.name for task, _ in left] == ["f2", "f1", "f3"]
    assert [context for _, context in searched] == ["context4", "context0"]  # each task keeps its context
    everything, none_left = hottest_first(pairs, best_ms, TuneOptions(160, Path("db")))
    assert len(everything) == 5 and none_left == []
    # a budget under two batches still searches the hottest function
    (only,), _ = hottest_first(pairs, best_ms, TuneOptions(3, Path("db")))
    assert only[0].name == "f4"
