"""CalibrationData: input dicts from .npz files, and one clear InputError for each kind of bad data."""

import numpy as np
import pytest

from edgetvm.errors import InputError
from edgetvm.pipeline.calibrate import CalibrationData
from edgetvm.pipeline.tensor_spec import TensorSpec

SPECS = [TensorSpec("image", (1, 1, 4, 4), "float32"), TensorSpec("mask", (1, 4), "float32")]


def _images(n):
    return np.random.default_rng(n).random((n, 1, 4, 4), dtype=np.float32)


def test_batches_and_single_samples_from_a_directory(tmp_path):
    np.savez(tmp_path / "a.npz", image=_images(3), mask=np.ones((3, 4), np.float32))  # batch along dim 0
    np.savez(tmp_path / "b.npz", image=_images(1)[0:1], mask=np.zeros((1, 4), np.float32))  # one sample
    np.savez(tmp_path / "c.npz", image=_images(2)[:, None], mask=np.ones((2, 1, 4), np.float32))  # [N, *shape]
    (tmp_path / "notes.txt").write_text("ignored")
    data = CalibrationData(tmp_path, SPECS)
    samples = list(data)
    assert data.check() == 6 and len(samples) == 6
    assert all(s["image"].shape == (1, 1, 4, 4) and s["mask"].shape == (1, 4) for s in samples)
    np.testing.assert_array_equal(samples[1]["image"][0], _images(3)[1])
    assert samples[3]["mask"].sum() == 0  # b.npz comes after a.npz


def test_single_input_model_accepts_an_unnamed_array(tmp_path):
    np.savez(tmp_path / "x.npz", _images(2))
    data = CalibrationData(tmp_path / "x.npz", SPECS[:1])
    assert [s["image"].shape for s in data] == [(1, 1, 4, 4)] * 2


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"img": _images(2), "mask": np.ones((2, 4), np.float32)}, "holds arrays ['img', 'mask'], the model's inputs"),
        ({"image": _images(2)}, "holds arrays ['image'], the model's inputs are ['image', 'mask']"),
        (
            {"image": np.zeros((2, 3, 4, 4), np.float32), "mask": np.ones((2, 4), np.float32)},
            "input 'image' has shape [2, 3, 4, 4], expected [1, 1, 4, 4] or a batch [N, 1, 4, 4]",
        ),
        (
            {"image": _images(2).astype(np.float64), "mask": np.ones((2, 4), np.float32)},
            "input 'image' has dtype float64, expected float32",
        ),
        (
            {
                "image": np.where(np.arange(32).reshape(2, 1, 4, 4) == 20, np.nan, 0).astype(np.float32),
                "mask": np.ones((2, 4), np.float32),
            },
            "input 'image' holds NaN or Inf (sample 1)",
        ),
        (
            {"image": _images(2), "mask": np.full((2, 4), np.inf, np.float32)},
            "input 'mask' holds NaN or Inf (sample 0)",
        ),
        ({"image": _images(2), "mask": np.ones((3, 4), np.float32)}, "inputs hold different numbers of samples"),
        ({"image": _images(0), "mask": np.ones((0, 4), np.float32)}, "the set is empty (0 samples)"),
    ],
)
def test_bad_data_is_one_clear_input_error(tmp_path, arrays, message):
    path = tmp_path / "calib.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError) as info:
        CalibrationData(path, SPECS).check()
    assert message in str(info.value) and str(path) in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_missing_path_empty_directory_and_unreadable_file(tmp_path):
    with pytest.raises(InputError, match="no such file or directory"):
        CalibrationData(tmp_path / "absent.npz", SPECS)
    with pytest.raises(InputError, match="the directory holds no .npz files"):
        CalibrationData(tmp_path, SPECS)
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(InputError, match="not a readable .npz archive"):
        CalibrationData(tmp_path / "bad.npz", SPECS).check()
