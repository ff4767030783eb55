"""Agreement metrics between a build's outputs and the reference model's."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class OutputAgreement:
    """How closely one output matches the reference.

    ``top1_agreement`` is the fraction of rows (all axes but the last) whose arg-max agrees; it is given
    for outputs that look like class scores (last axis of at least two classes) and ``None`` otherwise.
    """

    name: str
    max_abs_error: float
    mean_abs_error: float
    cosine: float
    top1_agreement: float | None

    def to_json(self) -> dict:
        return asdict(self)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    if norm == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.dot(a, b) / norm)


def top1_agreement(actual: np.ndarray, expected: np.ndarray) -> float | None:
    if expected.ndim == 0 or expected.shape[-1] < 2 or expected.dtype.kind != "f":
        return None
    rows_a = actual.reshape(-1, actual.shape[-1]).argmax(axis=1)
    rows_e = expected.reshape(-1, expected.shape[-1]).argmax(axis=1)
    return float(np.mean(rows_a == rows_e))


def agreement(name: str, actual: np.ndarray, expected: np.ndarray) -> OutputAgreement:
    """Metrics of ``actual`` against ``expected`` (same shape)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        raise ValueError(f"output {name!r}: shape {actual.shape} differs from the reference's {expected.shape}")
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    return OutputAgreement(
        name=name,
        max_abs_error=float(diff.max()) if diff.size else 0.0,
        mean_abs_error=float(diff.mean()) if diff.size else 0.0,
        cosine=cosine_similarity(actual, expected),
        top1_agreement=top1_agreement(actual, expected),
    )


def compare_outputs(names: list[str], actual: list[np.ndarray], expected: list[np.ndarray]) -> list[OutputAgreement]:
    """One ``OutputAgreement`` per output, in order."""
    return [agreement(name, a, e) for name, a, e in zip(names, actual, expected, strict=True)]


@dataclass
class CompareResult:
    """A build's outputs against the original model on the same inputs."""

    package: str
    reference: str
    reference_runtime: str
    outputs: list[OutputAgreement]

    def to_json(self) -> dict:
        return {
            "package": self.package,
            "reference": self.reference,
            "reference_runtime": self.reference_runtime,
            "outputs": [o.to_json() for o in self.outputs],
        }


def compare_package(package, inputs: dict[str, np.ndarray], reference_path=None) -> CompareResult:
    """Run ``package`` on this host and the original model (or ``reference_path``) on the same inputs."""
    from edgetvm.pipeline.reference import ReferenceModel
    from edgetvm.pipeline.run_local import LocalRunner

    reference = ReferenceModel(reference_path or package.manifest["model"]["path"])
    actual = LocalRunner(package).run(inputs)
    expected = reference.run(inputs)
    names = [spec.name for spec in package.outputs]
    return CompareResult(
        package=str(package.directory),
        reference=str(reference.path),
        reference_runtime=reference.runtime,
        outputs=compare_outputs(names, [actual[n] for n in names], expected),
    )
