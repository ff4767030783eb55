import numpy as np
import pytest

from edgetvm.pipeline.compare import agreement, cosine_similarity, top1_agreement


def test_identical_outputs_agree_fully():
    x = np.random.default_rng(0).random((4, 10), dtype=np.float32)
    result = agreement("y", x, x.copy())
    assert result.max_abs_error == 0.0 and result.cosine == pytest.approx(1.0) and result.top1_agreement == 1.0


def test_metrics_against_numpy():
    expected = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    actual = np.array([[0.2, 0.8], [0.4, 0.6], [0.3, 0.7]], np.float32)
    result = agreement("y", actual, expected)
    assert result.max_abs_error == pytest.approx(0.4, abs=1e-6)
    assert result.top1_agreement == pytest.approx(2 / 3)
    a, e = actual.ravel().astype(np.float64), expected.ravel().astype(np.float64)
    assert result.cosine == pytest.approx(a @ e / np.linalg.norm(a) / np.linalg.norm(e))


def test_top1_is_not_claimed_for_non_classifier_outputs():
    assert top1_agreement(np.zeros((3, 1)), np.zeros((3, 1))) is None
    assert cosine_similarity(np.zeros(3), np.zeros(3)) == 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        agreement("y", np.zeros((2, 2)), np.zeros((2, 3)))
