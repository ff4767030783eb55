import numpy as np
import pytest

from edgetvm.errors import InputError
from edgetvm.pipeline.inputs import check_inputs, load_inputs, random_inputs, read_npz
from edgetvm.pipeline.tensor_spec import TensorSpec, parse_shape_option

SPECS = [TensorSpec("x", (1, 3, 4, 4), "float32"), TensorSpec("ids", (1, 5), "int64")]


def test_parse_shape_option():
    assert parse_shape_option(["x=1x3x48x192", "y:0=2"]) == {"x": (1, 3, 48, 192), "y:0": (2,)}


@pytest.mark.parametrize("value", ["x", "x=", "=1x2", "x=1x0", "x=ax2", "x=-1x3"])
def test_bad_shape_option(value):
    with pytest.raises(InputError, match="--input-shape"):
        parse_shape_option([value])


def test_random_inputs_are_deterministic_and_typed():
    a, b = random_inputs(SPECS, seed=3), random_inputs(SPECS, seed=3)
    assert a["x"].dtype == np.float32 and a["ids"].dtype == np.int64
    assert a["x"].shape == (1, 3, 4, 4)
    np.testing.assert_array_equal(a["x"], b["x"])
    assert not np.array_equal(a["x"], random_inputs(SPECS, seed=4)["x"])


def test_check_inputs_names_the_problem(tmp_path):
    good = random_inputs(SPECS)
    assert list(check_inputs(good, SPECS, "f")) == ["x", "ids"]
    with pytest.raises(InputError, match=r"missing input\(s\) \['ids'\]"):
        check_inputs({"x": good["x"]}, SPECS, "f")
    with pytest.raises(InputError, match=r"input 'x' has shape \[1, 3, 4, 5\], expected \[1, 3, 4, 4\]"):
        check_inputs({**good, "x": np.zeros((1, 3, 4, 5), np.float32)}, SPECS, "f")
    with pytest.raises(InputError, match="input 'x' has dtype float64, expected float32"):
        check_inputs({**good, "x": good["x"].astype(np.float64)}, SPECS, "f")


def test_single_unnamed_array_is_accepted(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, np.zeros((1, 3, 4, 4), np.float32))
    assert list(load_inputs(path, SPECS[:1])) == ["x"]


def test_unreadable_npz(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        read_npz(bad)
    with pytest.raises(InputError, match="no such file"):
        read_npz(tmp_path / "missing.npz")
