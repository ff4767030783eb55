"""``LocalRunner``: inputs copied into buffers the VM's tensors alias, outputs owned by the caller."""

import numpy as np
import onnxruntime as ort
import pytest

from edgetvm.cli import main
from edgetvm.errors import InputError
from edgetvm.pipeline.package import Package
from edgetvm.pipeline.run_local import LocalRunner, aligned_empty
from edgetvm.pipeline.trained_models import load_eval_set, trained_model_path


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    out = tmp_path_factory.mktemp("run-local") / "mnist"
    assert main(["-q", "compile", str(trained_model_path()), "--target", "x86", "-o", str(out)]) == 0
    return LocalRunner(Package.load(out))


def test_each_run_reads_its_own_inputs_and_returns_owned_outputs(runner):
    images, _ = load_eval_set()
    session = ort.InferenceSession(str(trained_model_path()), providers=["CPUExecutionProvider"])
    first = runner.run({"image": images[0:1]})["logits"]
    second = runner.run({"image": images[1:2].astype(np.float64)})["logits"]  # cast like Tensor.copyfrom did
    third = runner.run({"image": np.asfortranarray(images[2:3, 0])[None]})["logits"]  # not C-contiguous
    for got, index in ((first, 0), (second, 1), (third, 2)):
        expected = session.run(None, {"image": images[index : index + 1]})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert not np.array_equal(first, second)  # the second run did not overwrite the first run's outputs


def test_a_wrong_shape_is_an_input_error_not_a_broadcast(runner):
    with pytest.raises(InputError, match=r"input 'image' has shape \[28, 28\], the model takes \[1, 1, 28, 28\]"):
        runner.run({"image": np.zeros((28, 28), dtype=np.float32)})


@pytest.mark.parametrize("dtype", ["float32", "int8", "float64"])
def test_buffers_are_aligned_like_tvm_tensors(dtype):
    for shape in [(1,), (3, 5), (1, 3, 48, 192)]:
        buffer = aligned_empty(shape, dtype)
        assert buffer.shape == shape and buffer.dtype == dtype and buffer.flags.c_contiguous
        assert buffer.ctypes.data % 64 == 0
