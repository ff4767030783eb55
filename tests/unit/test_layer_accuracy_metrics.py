"""Per-layer SQNR, its order, the sensitivity ranking, input samples, and the greedy mixed-precision search."""

import math

import numpy as np
import pytest

from edgetvm.errors import BudgetError, InputError
from edgetvm.pipeline.compare import OutputAgreement
from edgetvm.pipeline.layer_accuracy import (
    LayerAccuracy,
    LayerReport,
    load_samples,
    rank_by_sensitivity,
    sort_worst_first,
    sqnr_db,
)
from edgetvm.pipeline.mixed_precision import search_keep_float
from edgetvm.pipeline.passes.quant_layers import QuantLayer
from edgetvm.pipeline.tensor_spec import TensorSpec


def test_sqnr_matches_the_numpy_definition_over_all_samples():
    rng = np.random.default_rng(0)
    refs = [rng.standard_normal((2, 3)), rng.standard_normal((2, 3))]
    outs = [r + 0.01 * rng.standard_normal(r.shape) for r in refs]
    ref, out = np.concatenate(refs), np.concatenate(outs)
    expected = 10 * np.log10(np.sum(ref**2) / np.sum((out - ref) ** 2))
    assert sqnr_db(refs, outs) == pytest.approx(expected, rel=1e-12)
    assert 30 < sqnr_db(refs, outs) < 50  # 1 % noise: about 40 dB


def test_sqnr_limits():
    x = np.ones((4,), np.float32)
    assert sqnr_db([x], [x]) == math.inf
    assert sqnr_db([np.zeros(4)], [x]) == -math.inf
    assert sqnr_db([x], [2 * x]) == pytest.approx(0.0)


def _layer(key, sqnr, input_sqnr=math.inf, kept=False):
    return LayerAccuracy(key, "conv2d", (1, 1, 1, 1), sqnr, input_sqnr, kept)


def test_worst_first_and_ranking_by_added_noise():
    layers = [_layer("conv2d_0", 40.0), _layer("conv2d_1", 12.0, 12.5), _layer("conv2d_2", 20.0, 40.0)]
    assert [layer.key for layer in sort_worst_first(layers)] == ["conv2d_1", "conv2d_2", "conv2d_0"]
    # conv2d_1 is worst by SQNR but received most of its noise; conv2d_2 adds the most (1e-2 - 1e-4).
    assert layers[2].added_noise == pytest.approx(1e-2 - 1e-4)
    assert [layer.key for layer in rank_by_sensitivity(layers)] == ["conv2d_2", "conv2d_1", "conv2d_0"]
    layers.append(_layer("conv2d_3", 1.0, kept=True))
    assert "conv2d_3" not in [layer.key for layer in rank_by_sensitivity(layers)]
    assert sort_worst_first([_layer("a", math.inf), _layer("b", 3.0)])[0].key == "b"
    assert _layer("c", math.inf).to_json()["sqnr_db"] is None  # JSON has no infinity


SPEC = [TensorSpec("image", (1, 1, 2, 2), "float32")]


def test_samples_random_stacked_and_concatenated(tmp_path):
    assert len(load_samples(None, SPEC, seed=3, count=4)) == 4
    assert not np.array_equal(*[s["image"] for s in load_samples(None, SPEC, count=2)])
    data = np.arange(5 * 4, dtype=np.float32).reshape(5, 1, 1, 2, 2)
    np.savez(tmp_path / "stacked.npz", image=data, label=np.arange(5))
    samples = load_samples(tmp_path / "stacked.npz", SPEC)
    assert len(samples) == 5 and np.array_equal(samples[2]["image"], data[2])
    np.savez(tmp_path / "batch.npz", image=data.reshape(5, 1, 2, 2))  # an eval set along the batch axis
    samples = load_samples(tmp_path / "batch.npz", SPEC, count=3)
    assert len(samples) == 3 and samples[1]["image"].shape == (1, 1, 2, 2)
    np.savez(tmp_path / "one.npz", image=data[0])
    assert len(load_samples(tmp_path / "one.npz", SPEC)) == 1
    np.savez(tmp_path / "bad.npz", image=np.zeros((5, 3, 3), np.float32))
    with pytest.raises(InputError, match="stacked"):
        load_samples(tmp_path / "bad.npz", SPEC)
    with pytest.raises(InputError, match="--samples 0"):
        load_samples(None, SPEC, count=0)


class _ScriptedProbe:
    """The search's view of a LayerProbe, with a drop that falls as chosen layers go float (for the search logic
    alone; tests/e2e/test_layer_accuracy_cli.py runs the real probe)."""

    reference_runtime = "onnxruntime"

    def __init__(self, drops: dict, noise: dict, float_drop: float = 0.0):
        self.layers = [QuantLayer(key, "conv2d", (1, 1, 1, 1)) for key in noise]
        self._drops, self._noise, self.float_accuracy_drop = drops, noise, float_drop
        self.evaluated = []

    def evaluate(self, keep_float):
        self.evaluated.append(frozenset(keep_float))
        out = OutputAgreement("scores", 0.0, 0.0, 1.0, 1.0 - self._drops[frozenset(keep_float)] / 100.0)
        layers = [_layer(k, 10 * math.log10(1 / n), kept=k in keep_float) for k, n in self._noise.items()]
        return LayerReport(
            "m",
            "w8a8-dynamic",
            tuple(sorted(keep_float)),
            1,
            "onnxruntime",
            tuple(sort_worst_first(layers)),
            (out,),
            (),
        )


def test_search_keeps_the_most_sensitive_layer_float_until_the_budget_holds():
    drops = {frozenset(): 5.0, frozenset({"b"}): 2.0, frozenset({"a", "b"}): 0.5}
    probe = _ScriptedProbe(drops, {"a": 0.01, "b": 0.1, "c": 0.001})
    result = search_keep_float(probe, 1.0)
    assert result.keep_float == ("a", "b") and result.accuracy_drop == pytest.approx(0.5)
    assert [step.next_float for step in result.steps] == ["b", "a", None]
    assert probe.evaluated == [frozenset(), {"b"}, {"a", "b"}]
    assert result.to_json()["steps"][0] == {
        "keep_float": [],
        "accuracy_drop": pytest.approx(5.0),
        "worst_layer": "b",
        "worst_sqnr_db": pytest.approx(10.0),
        "next_float": "b",
    }


def test_search_refuses_a_budget_the_float_build_misses():
    probe = _ScriptedProbe({frozenset(): 5.0}, {"a": 0.1}, float_drop=0.2)
    with pytest.raises(BudgetError, match="even with every layer in float the drop .* 0.200 points"):
        search_keep_float(probe, 0.1)
    assert probe.evaluated == []  # refused before any quantized build
