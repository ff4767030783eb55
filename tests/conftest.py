"""Shared fixtures. Tests are grouped by what they need: unit/, e2e/ (TVM builds), hil/ (the emulated board)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetvm.pipeline.bundled_models import bundled_model


def pytest_collection_modifyitems(config, items):
    for item in items:
        group = Path(str(item.fspath)).parent.name
        if group in ("unit", "e2e", "hil"):
            item.add_marker(getattr(pytest.mark, group))


@pytest.fixture(scope="session")
def blazeface_path() -> Path:
    return bundled_model("blazeface").path()


@pytest.fixture(scope="session")
def ppocr_cls_path() -> Path:
    return bundled_model("ppocr-cls").path()
