"""Calibration statistics and methods against numpy references."""

import math

import numpy as np
import pytest
from scipy.stats import entropy as scipy_kl

from edgetvm.errors import InputError
from edgetvm.pipeline.calibrate import compute
from edgetvm.pipeline.calibration_stats import (
    MAX_BINS,
    NUM_BINS,
    CalibrationMethod,
    CalibrationRanges,
    CalibrationStats,
    LayerHistogram,
    LayerRange,
    entropy_threshold,
    merge_bins,
    percentile_threshold,
    threshold,
)


def _samples(seed=0, n=8):
    rng = np.random.default_rng(seed)
    # growing ranges, so that the histogram has to add and merge bins; one far outlier
    samples = [rng.standard_normal((40, 64)).astype(np.float32) * (1 + i) for i in range(n)]
    samples[3][0, 0] = 60.0
    return samples


def _histogram(samples) -> LayerHistogram:
    hist = LayerHistogram()
    for sample in samples:
        hist.update(sample)
    return hist


def test_histogram_counts_every_value_in_its_bin():
    samples = _samples()
    hist = _histogram(samples)
    values = np.abs(np.concatenate([s.ravel() for s in samples]))
    assert hist.total == values.size
    assert NUM_BINS // 2 <= hist.counts.size <= MAX_BINS
    assert hist.counts.size * hist.bin_width >= values.max()
    index = np.minimum(np.floor(values.astype(np.float64) / hist.bin_width), hist.counts.size - 1)
    expected = np.bincount(index.astype(np.int64), minlength=hist.counts.size)
    # binned at a narrower width, then merged: a value on an edge may land one bin over through float rounding
    assert np.abs(hist.counts - expected).sum() <= 4
    assert hist.min == pytest.approx(min(s.min() for s in samples)) and hist.max == 60.0


def test_histogram_after_an_all_zero_first_sample():
    hist = _histogram([np.zeros((2, 3), np.float32), np.array([1.0, -3.0], np.float32)])
    assert hist.total == 8 and hist.counts[0] == 6 and hist.counts.size * hist.bin_width >= 3.0
    assert hist.counts.size <= MAX_BINS


def test_merge_bins_sums_neighbours():
    counts = np.arange(10)
    assert merge_bins(counts, 2).tolist() == [1, 5, 9, 13, 17]
    assert merge_bins(counts, 4).tolist() == [6, 22, 17]
    assert merge_bins(counts, 64).tolist() == [45]


def test_minmax_is_the_largest_magnitude():
    samples = _samples()
    assert threshold(_histogram(samples), CalibrationMethod.MINMAX) == pytest.approx(60.0)
    negative = _histogram([np.array([-5.0, 2.0], np.float32)])
    assert threshold(negative, CalibrationMethod.MINMAX) == 5.0


@pytest.mark.parametrize("percentile", [50.0, 99.0, 99.99])
def test_percentile_matches_numpy_within_a_bin(percentile):
    samples = _samples()
    hist = _histogram(samples)
    values = np.abs(np.concatenate([s.ravel() for s in samples]))
    got = threshold(hist, CalibrationMethod.PERCENTILE, percentile)
    # between the sample values either side of the percentile's rank (numpy's "lower" and "higher"), give or take
    # the bin the histogram puts them in
    low = np.percentile(values, percentile, method="lower") - hist.bin_width
    high = np.percentile(values, percentile, method="higher") + hist.bin_width
    assert low <= got <= high, (low, got, high)
    assert got < 60.0  # the outlier is clipped


def test_percentile_interpolates_inside_the_bin():
    counts = np.array([0, 10, 0, 10])
    assert percentile_threshold(counts, 1.0, 25.0) == pytest.approx(1.5)
    assert percentile_threshold(counts, 1.0, 100.0) == pytest.approx(4.0)


def _reference_entropy(counts: np.ndarray, width: float, levels: int = 128) -> float:
    """TensorRT's algorithm written plainly: a loop over groups, scipy's KL divergence."""
    best, best_kl = None, math.inf
    for edge in range(levels, counts.size + 1):
        p = counts[:edge].astype(np.float64)
        p[-1] += counts[edge:].sum()
        q = np.zeros(edge)
        bounds = [(j * edge) // levels for j in range(levels + 1)]
        for j in range(levels):
            part = counts[bounds[j] : bounds[j + 1]]
            nonzero = part != 0
            if nonzero.any():
                q[bounds[j] : bounds[j + 1]][nonzero] = part.sum() / nonzero.sum()
        q = np.where((q == 0) & (p > 0), 1e-12 * q.sum() / 1, q)
        kl = scipy_kl(p / p.sum(), q / q.sum())
        if kl < best_kl:
            best, best_kl = edge, kl
    return best * width


def test_entropy_matches_the_reference_and_clips_a_long_tail():
    rng = np.random.default_rng(1)
    values = np.abs(rng.laplace(size=20000))
    counts, _ = np.histogram(values, bins=512, range=(0, values.max()))
    width = values.max() / 512
    got = entropy_threshold(counts, width)
    expected = _reference_entropy(counts, width)
    assert abs(got - expected) <= 2 * width
    assert got < 0.8 * values.max()  # the sparse tail is not worth its resolution
    assert got > np.percentile(values, 90)


def test_entropy_keeps_a_uniform_range():
    counts = np.full(400, 50)
    assert entropy_threshold(counts, 0.01) >= 0.95 * 4.0


def test_compute_gives_every_layer_a_range_and_scale():
    stats = CalibrationStats({"conv2d_0": _histogram(_samples()), "matmul_0": _histogram(_samples(2))}, 8)
    for method in CalibrationMethod:
        ranges = compute(stats, method, "sha")
        assert set(ranges.layers) == {"conv2d_0", "matmul_0"}
        for key, layer in ranges.layers.items():
            assert 0 < layer.threshold <= 60.0 and ranges.scale(key) == pytest.approx(layer.threshold / 127)
        assert (ranges.percentile is not None) == (method is CalibrationMethod.PERCENTILE)
    with pytest.raises(InputError, match="calib-percentile must be in"):
        compute(stats, CalibrationMethod.PERCENTILE, "sha", 0.0)


def test_empty_statistics_are_refused():
    with pytest.raises(InputError, match="the set is empty"):
        CalibrationStats({"conv2d_0": LayerHistogram()}, 0)


def test_ranges_round_trip_and_bad_files(tmp_path):
    ranges = CalibrationRanges(CalibrationMethod.MINMAX, 3, {"conv2d_0": LayerRange(-1.0, 2.0, 2.0)}, "abc")
    path = tmp_path / "calibration.json"
    ranges.save(path)
    assert CalibrationRanges.load(path) == ranges
    with pytest.raises(InputError, match="no entry for layer 'matmul_0'"):
        ranges.scale("matmul_0")
    path.write_text('{"method": "minmax"}')
    with pytest.raises(InputError, match="missing or bad field"):
        CalibrationRanges.load(path)
    path.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        CalibrationRanges.load(path)
    with pytest.raises(InputError, match="cannot read"):
        CalibrationRanges.load(tmp_path / "absent.json")
    with pytest.raises(InputError, match="calibration method must be one of minmax, percentile, entropy"):
        CalibrationMethod.parse("median")
