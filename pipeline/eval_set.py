"""Eval sets: many real inputs, optionally labelled, on which a build's top-1 answers are scored.

An eval set is an ``.npz`` file (or a directory of them) in the calibration data's layout (one array per model
input, samples stacked on a leading axis) plus an optional ``label`` array [N] of class indices. ``edgetvm bench
--eval-set`` runs every variant on every sample: top-1 accuracy against the labels, and top-1 agreement with the
float reference's answers. One random input (what the timing runs on) says little about a classifier: noise
leaves its classes near a tie, so a quantized build may flip them without being wrong on real inputs, or keep
them while being wrong. The bench suite's eval sets are the trained CNN's held-out digits and text lines rendered
for the PP-OCR orientation classifier (``text_lines``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetvm.errors import InputError
from edgetvm.pipeline.tensor_spec import TensorSpec

LABEL = "label"
KIND = "eval set"


@dataclass(frozen=True)
class ModelData:
    """Real inputs for a model: an eval set (inputs and ``label``) and a calibration set (inputs), as files."""

    eval_set: Path
    calibration_set: Path


@dataclass(frozen=True)
class EvalSet:
    path: Path
    samples: list[dict[str, np.ndarray]]
    labels: np.ndarray | None  # [N] class indices, or None: agreement only

    def __len__(self) -> int:
        return len(self.samples)


def load_eval_set(path: str | Path, specs: list[TensorSpec], limit: int | None = None) -> EvalSet:
    """Read and check ``path`` against the model's inputs; ``limit`` keeps the first samples only.

    Raises
    ------
    InputError
        As for calibration data (names, shapes, dtypes, NaN, empty), and for labels that are not integers or not
        one per sample.
    """
    from edgetvm.pipeline.calibrate import CalibrationData

    samples, extra = CalibrationData(path, specs, kind=KIND, extra=(LABEL,)).read_with_extra()
    labels = extra.get(LABEL)
    if labels is not None:
        if labels.dtype.kind not in "iu" or labels.ndim != 1 or len(labels) != len(samples):
            raise InputError(
                f"{KIND} {path}: '{LABEL}' must be one integer class per sample ({len(samples)}), got "
                f"{labels.dtype} of shape {list(labels.shape)}"
            )
        labels = labels.astype(np.int64)
    if limit is not None:
        samples = samples[:limit]
        labels = None if labels is None else labels[:limit]
    return EvalSet(Path(path), samples, labels)


def top1(outputs: Sequence[np.ndarray]) -> int:
    """The class a classifier answered: the argmax of its first output, which must hold one row of scores."""
    scores = np.asarray(outputs[0])
    if scores.size == 0 or scores.size != scores.shape[-1]:
        raise InputError(
            f"an eval set scores a classifier: the model's first output must be one row of class scores, got shape "
            f"{list(scores.shape)}"
        )
    return int(np.argmax(scores.reshape(-1)))


def answers(run: Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]], eval_set: EvalSet) -> np.ndarray:
    """The top-1 class of ``run`` on every sample."""
    return np.array([top1(run(sample)) for sample in eval_set.samples], dtype=np.int64)


def score(predicted: np.ndarray, eval_set: EvalSet, reference: np.ndarray, reference_label: str) -> dict:
    """What a bench row's ``eval`` holds: samples, top-1 accuracy (labelled sets), agreement with the reference."""
    return {
        "path": str(eval_set.path),
        "samples": len(predicted),
        "top1_accuracy": None if eval_set.labels is None else float((predicted == eval_set.labels).mean()),
        "top1_agreement": float((predicted == reference).mean()),
        "reference": reference_label,
    }
