"""Artifacts of the real models, compiled once per session through the CLI."""

from __future__ import annotations

import pytest

from edgetvm.cli import main


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
