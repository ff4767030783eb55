"""Shared fixtures. Tests are grouped by what they need: unit/, passes/ (Relax passes, small TVM builds), e2e/ (TVM
builds of real models), hil/ (the emulated board)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetvm.cli import main
from edgetvm.pipeline.bundled_models import bundled_model


def pytest_collection_modifyitems(config, items):
    for item in items:
        group = Path(str(item.fspath)).parent.name
        if group in ("unit", "passes", "e2e", "hil"):
            item.add_marker(getattr(pytest.mark, group))


@pytest.fixture(scope="session")
def blazeface_path() -> Path:
    return bundled_model("blazeface").path()


@pytest.fixture(scope="session")
def ppocr_cls_path() -> Path:
    return bundled_model("ppocr-cls").path()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory, blazeface_path, ppocr_cls_path):
    """Compile on first use: ``artifacts(model, target)`` -> artifact directory."""
    root = tmp_path_factory.mktemp("artifacts")
    models = {"blazeface": (blazeface_path, []), "ppocr-cls": (ppocr_cls_path, ["--input-shape", "x=1x3x48x192"])}
    built = {}

    def get(model: str, target: str):
        if (model, target) not in built:
            path, extra = models[model]
            out = root / f"{model}-{target}"
            assert main(["-q", "compile", str(path), *extra, "--target", target, "-o", str(out)]) == 0
            built[model, target] = out
        return built[model, target]

    return get
