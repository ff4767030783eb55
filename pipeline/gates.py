"""Build-step gates: accuracy, latency and regression budgets that fail a product build or CI job (exit 5).

A *measurement* is what one command measured of one build: its median latency and its per-output agreement with
the float reference (``compare``'s metrics). ``check`` turns a ``Budget`` and measurements into ``GateResult``s;
``enforce`` raises ``BudgetError`` with a one-line reason when any is broken, after ``write_junit`` (if asked)
recorded every result for a CI system.

Accuracy drop of one output, in percentage points: ``100 * (1 - top-1 agreement)`` for outputs that look like
class scores, else ``100 * (1 - cosine)``; a build's drop is its worst output's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from edgetvm.cache import write_atomic
from edgetvm.errors import BudgetError, InputError


@dataclass(frozen=True)
class Budget:
    max_accuracy_drop: float | None = None  # percentage points (see the module docstring)
    max_latency_ms: float | None = None
    baseline_report: Path | None = None  # an earlier deploy report.json or bench.json
    max_regression: float | None = None  # fraction: 0.1 = the median may grow by 10 % over the baseline's

    @property
    def empty(self) -> bool:
        return self.max_accuracy_drop is None and self.max_latency_ms is None and self.max_regression is None

    def __post_init__(self):
        if (self.baseline_report is None) != (self.max_regression is None):
            raise InputError("--baseline-report and --max-regression go together: give both or neither")
        for name, value in (("--max-accuracy-drop", self.max_accuracy_drop), ("--max-latency-ms", self.max_latency_ms)):
            if value is not None and value < 0:
                raise InputError(f"{name} {value}: a budget cannot be negative")


def parse_regression(text: str | None) -> float | None:
    """``10%`` or ``10`` -> 0.10."""
    if text is None:
        return None
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise InputError(f"--max-regression {text!r}: give a percentage such as 10%") from None
    if value < 0:
        raise InputError(f"--max-regression {text}: a budget cannot be negative")
    return value / 100.0


@dataclass(frozen=True)
class Measurement:
    """What was measured of one build: ``key`` matches it with the baseline report's row."""

    name: str
    key: str
    latency_ms: float | None
    accuracy: list[dict] | None  # compare's per-output agreement dicts


@dataclass(frozen=True)
class GateResult:
    gate: str  # accuracy | latency | regression
    subject: str
    passed: bool
    message: str


def accuracy_drop(outputs: list[dict]) -> float:
    """Worst output's drop in percentage points (see the module docstring)."""
    drops = []
    for output in outputs:
        top1 = output.get("top1_agreement")
        drops.append(100.0 * (1.0 - (top1 if top1 is not None else output["cosine"])))
    return max(drops) if drops else 0.0


def baseline_latencies(path: Path) -> dict[str, float]:
    """Median latency by measurement key from an earlier ``deploy -o`` report or ``bench.json``."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise InputError(
            f"--baseline-report {path}: cannot read it as JSON ({err}); give a report.json or bench.json"
        ) from err
    if "results" in report:
        return {
            f"{row['runtime']}:{row['variant']}": row["latency_ms"]["median"]
            for row in report["results"]
            if row.get("latency_ms")
        }
    if "latency_ms" in report:
        return {"deploy": report["latency_ms"]["median"]}
    raise InputError(f"--baseline-report {path}: neither a deploy report nor a bench.json (no latency_ms, no results)")


def check(budget: Budget, measurements: list[Measurement]) -> list[GateResult]:
    baseline = baseline_latencies(budget.baseline_report) if budget.baseline_report else {}
    results = []
    for m in measurements:
        if budget.max_accuracy_drop is not None and m.accuracy is not None:
            drop = accuracy_drop(m.accuracy)
            results.append(
                GateResult(
                    "accuracy",
                    m.name,
                    drop <= budget.max_accuracy_drop,
                    f"{m.name}: accuracy drop {drop:.3f} points against the float reference "
                    f"(budget {budget.max_accuracy_drop:g})",
                )
            )
        if budget.max_latency_ms is not None and m.latency_ms is not None:
            results.append(
                GateResult(
                    "latency",
                    m.name,
                    m.latency_ms <= budget.max_latency_ms,
                    f"{m.name}: median latency {m.latency_ms:.3f} ms (budget {budget.max_latency_ms:g} ms)",
                )
            )
        if budget.max_regression is not None and m.latency_ms is not None:
            old = baseline.get(m.key)
            if old is None:
                results.append(
                    GateResult("regression", m.name, False, f"{m.name}: not in the baseline report, nothing to compare")
                )
                continue
            growth = m.latency_ms / old - 1.0
            results.append(
                GateResult(
                    "regression",
                    m.name,
                    growth <= budget.max_regression,
                    f"{m.name}: median {m.latency_ms:.3f} ms against {old:.3f} ms in the baseline "
                    f"({growth:+.1%}, budget +{budget.max_regression:.0%})",
                )
            )
    return results


def write_junit(path: Path, results: list[GateResult], suite: str = "edgetvm-gates") -> None:
    """JUnit XML, one test case a gate; written to a temporary file and renamed."""
    failures = sum(not r.passed for r in results)
    root = ElementTree.Element("testsuite", name=suite, tests=str(len(results)), failures=str(failures), errors="0")
    for result in results:
        case = ElementTree.SubElement(root, "testcase", classname=f"{suite}.{result.gate}", name=result.subject)
        if not result.passed:
            ElementTree.SubElement(case, "failure", message=result.message, type="BudgetError").text = result.message
        else:
            ElementTree.SubElement(case, "system-out").text = result.message
    write_atomic(Path(path), lambda f: ElementTree.ElementTree(root).write(f, encoding="utf-8", xml_declaration=True))


def enforce(budget: Budget, measurements: list[Measurement], junit: Path | None = None) -> list[GateResult]:
    """Check every gate, record them in ``junit``, raise BudgetError (exit 5) naming the first broken one."""
    results = check(budget, measurements)
    if junit is not None:
        write_junit(junit, results)
    broken = [r for r in results if not r.passed]
    if broken:
        more = f" (and {len(broken) - 1} more broken gate(s))" if len(broken) > 1 else ""
        raise BudgetError(f"budget broken: {broken[0].message}{more}")
    return results


def require_host(target) -> None:
    """InputError unless ``target`` (a TargetPreset) runs here: ``compile``'s budgets are measured on this host."""
    if not target.is_host:
        raise InputError(
            f"compile --max-*: a {target.name} build cannot run on this host; put the budgets on "
            "'edgetvm deploy' to measure it on the board"
        )


def measure_host_build(package, inputs, repeat: int = 20) -> Measurement:
    """``compile``'s gates: accuracy against the original model and median latency of ``repeat`` runs, here.

    Raises InputError for artifacts this host cannot run: boards are measured by ``deploy``'s gates.
    """
    import time

    import numpy as np

    from edgetvm.pipeline.compare import compare_package
    from edgetvm.pipeline.run_local import LocalRunner

    require_host(package.target())
    agreement = compare_package(package, inputs)
    runner = LocalRunner(package)
    runner.run(inputs)  # warm-up: the first run pays for the thread pool and page faults
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        runner.run(inputs)
        samples.append((time.perf_counter() - start) * 1e3)
    return Measurement(
        f"compile {package.directory.name}",
        "edgetvm:" + _scheme_name(package),
        float(np.median(samples)),
        [o.to_json() for o in agreement.outputs],
    )


def _scheme_name(package) -> str:
    quantization = package.manifest.get("quantization", "none")
    return quantization if isinstance(quantization, str) else quantization.get("name", "none")


def bench_measurements(report: dict) -> list[Measurement]:
    """One measurement per edgetvm build of a ``bench.json`` (the baselines are not what the budget is for)."""
    return [
        Measurement(
            f"edgetvm {row['variant']}",
            f"edgetvm:{row['variant']}",
            row["latency_ms"]["median"] if row.get("latency_ms") else None,
            (row.get("accuracy") or {}).get("outputs"),
        )
        for row in report["results"]
        if row["runtime"] == "edgetvm" and not row.get("error")
    ]
