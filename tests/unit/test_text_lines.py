"""Text lines rendered for the PP-OCR orientation classifier: deterministic, labelled, preprocessed like PaddleOCR."""

from dataclasses import replace

import numpy as np
import pytest

from edgetvm.pipeline.text_lines import TURNED, UPRIGHT, TextLineRecipe, preprocess, render_lines, text_line_sets

SMALL = TextLineRecipe(eval_count=6, calibration_count=2)


def test_lines_are_deterministic_and_alternate_upright_and_turned():
    first, labels = render_lines(SMALL, 6, np.random.default_rng(3))
    again, _ = render_lines(SMALL, 6, np.random.default_rng(3))
    other, _ = render_lines(SMALL, 6, np.random.default_rng(4))
    assert first.shape == (6, 3, 48, 192) and first.dtype == np.float32
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert labels.tolist() == [UPRIGHT, TURNED] * 3
    assert first.min() >= -1.0 and first.max() <= 1.0
    assert (first < 0).any() and (first > 0.2).any()  # dark ink on a light background


def test_preprocess_scales_to_height_and_pads_on_the_right():
    line = np.full((24, 40, 3), 255, dtype=np.uint8)  # aspect 5/3: 80 pixels wide at height 48
    out = preprocess(line)
    assert out.shape == (3, 48, 192)
    assert np.allclose(out[:, :, :80], 1.0) and np.all(out[:, :, 80:] == 0.0)
    wide = preprocess(np.zeros((10, 400, 3), dtype=np.uint8))  # wider than 192 at height 48: squeezed to 192
    assert np.allclose(wide, -1.0)


def test_sets_are_written_once_under_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETVM_CACHE", str(tmp_path))
    sets = text_line_sets(SMALL)
    assert sets.eval_set.parent.parent == tmp_path / "data"
    with np.load(sets.eval_set) as data:
        assert data["x"].shape == (6, 3, 48, 192) and data["label"].tolist() == [0, 1] * 3
    with np.load(sets.calibration_set) as data:
        assert list(data.files) == ["x"] and data["x"].shape == (2, 3, 48, 192)
    stamp = sets.eval_set.stat().st_mtime_ns
    assert text_line_sets(SMALL) == sets and sets.eval_set.stat().st_mtime_ns == stamp
    assert text_line_sets(replace(SMALL, seed=1)).eval_set != sets.eval_set  # a new recipe, a new set


@pytest.mark.parametrize("field", ["eval_count", "seed", "revision"])
def test_recipe_key_covers_its_fields(field):
    assert replace(SMALL, **{field: getattr(SMALL, field) + 1}).key() != SMALL.key()
