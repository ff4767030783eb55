"""Mixed precision with an accuracy budget: keep the most sensitive layers in float until the drop holds.

The budget is the build gates' ``--max-accuracy-drop`` (percentage points of top-1 agreement, or of cosine for
outputs without classes, worst output; see ``gates.py``), measured the same way: against the original model run
by onnxruntime / tflite-runtime on the same inputs. The search is greedy: quantize, measure every layer
(``LayerProbe``), keep the layer that adds the most noise in float, measure again, until the drop is within the
budget. Every step is an x86 build of the quantized module run on this host, also for board targets (integer
arithmetic is the same on every target).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from edgetvm.errors import BudgetError
from edgetvm.pipeline.layer_accuracy import LayerProbe, LayerReport, finite_or_none

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchStep:
    """One measured build: the layers it kept in float, its drop, and the layer the search kept float next."""

    keep_float: tuple[str, ...]
    accuracy_drop: float
    worst_layer: str | None  # the lowest-SQNR quantized layer of this build
    worst_sqnr_db: float | None
    next_float: str | None  # None: the budget held (or nothing was left to keep in float)

    def to_json(self) -> dict:
        return {
            "keep_float": list(self.keep_float),
            "accuracy_drop": self.accuracy_drop,
            "worst_layer": self.worst_layer,
            "worst_sqnr_db": self.worst_sqnr_db,
            "next_float": self.next_float,
        }


@dataclass(frozen=True)
class MixedPrecisionResult:
    """The layers kept in float, the drop they reach, and every step of the search."""

    max_accuracy_drop: float
    keep_float: tuple[str, ...]
    accuracy_drop: float
    float_accuracy_drop: float
    steps: tuple[SearchStep, ...]
    report: LayerReport  # of the final build

    def to_json(self) -> dict:
        """What ``manifest.json`` records under ``quantization.mixed_precision``."""
        return {
            "max_accuracy_drop": self.max_accuracy_drop,
            "keep_float": list(self.keep_float),
            "accuracy_drop": self.accuracy_drop,
            "float_accuracy_drop": self.float_accuracy_drop,
            "samples": self.report.samples,
            "reference_runtime": self.report.reference_runtime,
            "measured_on": "host (x86) builds of the same quantized module",
            "steps": [step.to_json() for step in self.steps],
        }


def search_keep_float(
    probe: LayerProbe, max_accuracy_drop: float, progress: Callable[[str], None] | None = None
) -> MixedPrecisionResult:
    """Keep layers in float, most sensitive first, one at a time, until the accuracy drop is within budget.

    Raises
    ------
    BudgetError
        When even the float build's drop is over the budget: no set of float layers can meet it.
    """
    floor = probe.float_accuracy_drop
    if floor > max_accuracy_drop:
        raise BudgetError(
            f"accuracy budget {max_accuracy_drop:g} points cannot be met: even with every layer in float the drop "
            f"against {probe.reference_runtime} is {floor:.3f} points; raise --max-accuracy-drop"
        )
    keep: tuple[str, ...] = ()
    steps: list[SearchStep] = []
    while True:
        report = probe.evaluate(frozenset(keep))
        drop = report.accuracy_drop
        ranked = report.by_sensitivity()
        worst = next((layer for layer in report.layers if not layer.kept_float), None)
        chosen = ranked[0].key if drop > max_accuracy_drop and ranked else None
        steps.append(
            SearchStep(keep, drop, worst and worst.key, worst and finite_or_none(worst.sqnr_db), chosen),
        )
        message = (
            f"mixed precision: {len(keep)} layer(s) in float, drop {drop:.3f} points (budget {max_accuracy_drop:g})"
        )
        log.info("%s", message)
        if progress is not None:
            progress(message + (f"; measuring with {chosen} in float too" if chosen else ""))
        if chosen is None:
            break
        keep = tuple(layer.key for layer in probe.layers if layer.key in {*keep, chosen})  # binding order
    if drop > max_accuracy_drop:  # every layer in float and still over: the float build itself differs
        raise BudgetError(
            f"accuracy budget {max_accuracy_drop:g} points cannot be met: with all {len(keep)} layers in float "
            f"the drop is still {drop:.3f} points; raise --max-accuracy-drop"
        )
    return MixedPrecisionResult(max_accuracy_drop, keep, drop, report.float_accuracy_drop, tuple(steps), report)
