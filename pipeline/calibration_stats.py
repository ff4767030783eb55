"""Calibration statistics and the activation ranges computed from them (``pipeline/calibrate.py`` fills them).

Per layer (keyed like ``quant_layers``: ``conv2d_0``, ``matmul_3``), ``collect`` keeps the min, the max and a
histogram of ``|x|`` of the layer's input over every calibration sample; ``compute`` turns each histogram into a
symmetric clipping threshold by one ``CalibrationMethod``, and the int8 scale is ``threshold / 127``.

The histogram has fixed-width bins from 0: when a later sample exceeds the covered range, bins are added at the
same width, and when there would be more than ``MAX_BINS`` neighbouring bins are summed in pairs (edges line up,
so nothing is re-estimated). Percentile and entropy therefore see between ``MAX_BINS / 2`` and ``MAX_BINS`` bins.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetvm.errors import InputError

QMAX = 127
NUM_BINS = 2048  # the first sample's range is cut into this many bins
MAX_BINS = 4096
ENTROPY_BINS = 2048  # the entropy search runs on at most this many bins (it is quadratic in them)
QUANTIZED_LEVELS = 128  # |x| maps to 0..127 in symmetric int8
DEFAULT_PERCENTILE = 99.99
_TINY = 1e-12  # the width of a histogram whose first sample is all zeros


class CalibrationMethod(enum.Enum):
    """How a layer's input range is chosen from its calibration statistics."""

    MINMAX = "minmax"  # the largest |x| seen
    PERCENTILE = "percentile"  # the given percentile of |x| (outliers are clipped)
    ENTROPY = "entropy"  # the threshold whose int8 histogram has the least KL divergence from the float one

    @classmethod
    def parse(cls, name: str) -> CalibrationMethod:
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(method.value for method in cls)
            raise InputError(f"calibration method must be one of {known}, got {name!r}") from None


@dataclass
class LayerHistogram:
    """Running statistics of one layer input: min, max and a histogram of ``|x|`` (``counts[i]`` covers
    ``[i * bin_width, (i + 1) * bin_width)``, the last bin also its upper edge)."""

    min: float = math.inf
    max: float = -math.inf
    bin_width: float = 0.0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        self.counts = np.asarray(self.counts, dtype=np.int64)
        if self.counts.ndim != 1 or (self.counts < 0).any():
            raise ValueError("histogram counts must be a 1-D array of non-negative integers")
        if self.counts.size and not (self.bin_width > 0 and math.isfinite(self.bin_width)):
            raise ValueError(f"histogram bin width must be positive and finite, got {self.bin_width}")
        if self.counts.size and not (math.isfinite(self.min) and math.isfinite(self.max) and self.min <= self.max):
            raise ValueError(f"histogram min/max must be finite and ordered, got {self.min}, {self.max}")

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def abs_max(self) -> float:
        return max(abs(self.min), abs(self.max))

    def update(self, values: np.ndarray) -> None:
        """Add the values of one sample."""
        flat = np.abs(np.asarray(values, dtype=np.float32).ravel())
        if flat.size == 0:
            return
        self.min = min(self.min, float(np.min(values)))
        self.max = max(self.max, float(np.max(values)))
        top = float(flat.max())
        if self.counts.size == 0:
            self.bin_width = max(top, _TINY) / NUM_BINS
            self.counts = np.zeros(NUM_BINS, np.int64)
        elif top > self.bin_width * self.counts.size:
            self._grow(top)
        index = np.minimum((flat.astype(np.float64) / self.bin_width).astype(np.int64), self.counts.size - 1)
        self.counts += np.bincount(index, minlength=self.counts.size)

    def _grow(self, top: float) -> None:
        needed = math.ceil(top / self.bin_width)
        factor = 1 << max(0, math.ceil(math.log2(needed / MAX_BINS)))
        self.counts = merge_bins(self.counts, factor)
        self.bin_width *= factor
        size = max(self.counts.size, math.ceil(top / self.bin_width))
        self.counts = np.pad(self.counts, (0, size - self.counts.size))


def merge_bins(counts: np.ndarray, factor: int) -> np.ndarray:
    """Sum every ``factor`` neighbouring bins (a factor beyond the length puts everything in one bin)."""
    if factor <= 1:
        return counts
    if factor >= counts.size:
        return np.array([counts.sum()], np.int64)
    padded = np.pad(counts, (0, (-counts.size) % factor))
    return padded.reshape(-1, factor).sum(axis=1)


@dataclass
class CalibrationStats:
    """What ``collect`` saw: one histogram per layer key, over ``samples`` input sets."""

    layers: dict[str, LayerHistogram]
    samples: int

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise InputError("calibration data: the set is empty; give at least one input set")
        empty = [key for key, hist in self.layers.items() if hist.total == 0]
        if empty:
            raise InputError(f"calibration: layers {empty} saw no values; the calibration data cannot be used")


def threshold(hist: LayerHistogram, method: CalibrationMethod, percentile: float = DEFAULT_PERCENTILE) -> float:
    """The clipping threshold of ``|x|`` that ``method`` picks from ``hist``."""
    if method is CalibrationMethod.MINMAX:
        return hist.abs_max
    if method is CalibrationMethod.PERCENTILE:
        return min(percentile_threshold(hist.counts, hist.bin_width, percentile), hist.abs_max)
    factor = 1 << max(0, math.ceil(math.log2(hist.counts.size / ENTROPY_BINS)))
    counts = merge_bins(hist.counts, factor)
    return min(entropy_threshold(counts, hist.bin_width * factor), hist.abs_max)


def percentile_threshold(counts: np.ndarray, bin_width: float, percentile: float) -> float:
    """The ``percentile`` of the histogrammed values, interpolated linearly inside its bin."""
    cumulative = np.cumsum(counts, dtype=np.float64)
    target = cumulative[-1] * percentile / 100.0
    index = int(np.searchsorted(cumulative, target, side="left"))
    index = min(index, counts.size - 1)
    below = cumulative[index - 1] if index > 0 else 0.0
    inside = (target - below) / counts[index] if counts[index] else 1.0
    return float((index + inside) * bin_width)


def entropy_threshold(counts: np.ndarray, bin_width: float, levels: int = QUANTIZED_LEVELS) -> float:
    """The threshold (a bin edge) whose ``levels``-level quantization of the histogram loses the least
    information: TensorRT's KL-divergence calibration.

    For each candidate edge ``i`` (``levels`` bins and up), P is the histogram cut at ``i`` with everything
    beyond added to its last bin, Q is the cut histogram merged into ``levels`` groups and spread back evenly
    over each group's non-empty bins; the edge with the smallest KL(P || Q) wins.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.size <= levels:
        return float(counts.size * bin_width)
    tail = np.cumsum(counts[::-1])[::-1]  # tail[i] = sum(counts[i:])
    best_edge, best_kl = counts.size, math.inf
    for edge in range(levels, counts.size + 1):
        kl = _kl_of_cut(counts[:edge], tail[edge] if edge < counts.size else 0.0, levels)
        if kl < best_kl:
            best_edge, best_kl = edge, kl
    return float(best_edge * bin_width)


def _kl_of_cut(kept: np.ndarray, outliers: float, levels: int) -> float:
    reference = kept.copy()
    reference[-1] += outliers
    starts = (np.arange(levels) * kept.size) // levels
    nonzero = kept != 0
    group_sums = np.add.reduceat(kept, starts)
    group_nonzero = np.add.reduceat(nonzero.astype(np.float64), starts)
    group_of_bin = np.repeat(np.arange(levels), np.diff(np.append(starts, kept.size)))
    spread = np.where(group_nonzero > 0, group_sums / np.maximum(group_nonzero, 1), 0.0)
    expanded = np.where(nonzero, spread[group_of_bin], 0.0)
    p_total, q_total = reference.sum(), expanded.sum()
    if p_total == 0 or q_total == 0:
        return math.inf
    p = reference / p_total
    q = expanded / q_total
    mask = p > 0
    q_masked = np.where(q[mask] > 0, q[mask], 1e-12)  # P's outlier bin may hold what Q put nowhere
    return float(np.sum(p[mask] * np.log(p[mask] / q_masked)))


@dataclass(frozen=True)
class LayerRange:
    """One layer input's observed range and the symmetric threshold chosen for it."""

    min: float
    max: float
    threshold: float

    def __post_init__(self) -> None:
        values = (self.min, self.max, self.threshold)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise ValueError(f"min, max and threshold must be finite numbers, got {values}")
        if self.min > self.max or self.threshold < 0:
            raise ValueError(f"need min <= max and threshold >= 0, got {values}")

    @property
    def scale(self) -> float:
        """The int8 scale: ``threshold / 127`` (at least a tiny positive number, so that zeros stay zeros)."""
        return max(self.threshold, _TINY) / QMAX


@dataclass(frozen=True)
class CalibrationRanges:
    """The ranges of every layer input, as ``calibration.json`` stores them in the artifact directory."""

    method: CalibrationMethod
    samples: int
    layers: dict[str, LayerRange]
    model_sha256: str
    percentile: float | None = None

    def __post_init__(self) -> None:
        if (self.method is CalibrationMethod.PERCENTILE) != (self.percentile is not None):
            raise ValueError("percentile is given exactly when the method is 'percentile'")
        if self.percentile is not None and not 0 < self.percentile <= 100:
            raise InputError(f"--calib-percentile must be in (0, 100], got {self.percentile}")

    def scale(self, key: str) -> float:
        """The int8 scale of layer ``key``'s input.

        Raises
        ------
        InputError
            When the ranges hold no entry for ``key`` (they were computed for another model).
        """
        if key not in self.layers:
            raise InputError(
                f"calibration ranges have no entry for layer {key!r} (they hold {', '.join(self.layers)}); "
                "calibrate this model again with --calib"
            )
        return self.layers[key].scale

    def check_covers(self, keys: list[str]) -> None:
        """InputError naming the first of ``keys`` without a range (a ``scale`` call would fail on it)."""
        for key in keys:
            self.scale(key)

    def to_json(self) -> dict:
        return {
            "method": self.method.value,
            "percentile": self.percentile,
            "samples": self.samples,
            "model_sha256": self.model_sha256,
            "layers": {
                key: {"min": r.min, "max": r.max, "threshold": r.threshold, "scale": r.scale}
                for key, r in self.layers.items()
            },
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CalibrationRanges:
        """Read a ``calibration.json`` (from an earlier artifact, or edited by hand).

        Raises
        ------
        InputError
            When the file is missing, not JSON, or a field is missing or out of range.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            layers = {
                str(key): LayerRange(float(v["min"]), float(v["max"]), float(v["threshold"]))
                for key, v in data["layers"].items()
            }
            percentile = data.get("percentile")
            return cls(
                CalibrationMethod.parse(data["method"]),
                int(data["samples"]),
                layers,
                str(data["model_sha256"]),
                None if percentile is None else float(percentile),
            )
        except OSError as err:
            raise InputError(f"calibration ranges {path}: cannot read ({err.strerror})") from err
        except json.JSONDecodeError as err:
            raise InputError(f"calibration ranges {path}: not valid JSON ({err})") from err
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InputError(
                f"calibration ranges {path}: missing or bad field ({err}); write it with 'edgetvm compile --calib'"
            ) from err
