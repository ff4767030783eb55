"""Text-line images with known orientation, for the PP-OCR text-orientation classifier (``ppocr-cls``).

The classifier ships without images. Its task is narrow: is a cropped line of text upright (class 0, label
``"0"``) or upside down (class 1, ``"180"``)? Lines rendered here with real fonts answer that with a ground truth:
English phrases from Python's own documentation (``pydoc_data.topics``), in the DejaVu fonts that matplotlib ships
inside its wheel, dark on light at random sizes, contrasts and margins, half of them turned by 180 degrees.
Each image goes through PaddleOCR's classifier preprocessing (``resize_norm_img``: height 48, width by aspect
ratio up to 192, values ``(v / 255 - 0.5) / 0.5``, zero padding on the right).

``text_line_sets()`` writes an eval set (``x`` [N, 3, 48, 192] float32, ``label`` [N] int64) and a calibration
set (other phrases, ``x`` only) once, under ``cache_dir() / "data" / "ppocr-text-lines-<recipe hash>"``; the
float classifier gets about 99% of the eval set right, so a quantized build's top-1 agreement with float is
measured on the inputs the model is for, not on noise.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgetvm.cache import cache_dir, write_atomic
from edgetvm.errors import InputError
from edgetvm.pipeline.eval_set import ModelData

FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif-Italic.ttf")
UPRIGHT, TURNED = 0, 1  # the classifier's classes: "0" and "180"


@dataclass(frozen=True)
class TextLineRecipe:
    """Everything that decides the rendered lines (a changed field renders a new set)."""

    eval_count: int = 200
    calibration_count: int = 32
    seed: int = 0
    height: int = 48
    width: int = 192
    font_sizes: tuple[int, int] = (18, 40)  # pixels, low inclusive, high exclusive
    words: tuple[int, int] = (1, 7)  # words per line
    revision: int = 1  # bump when the rendering code changes what the same fields produce

    def key(self) -> str:
        # the phrases come from this Python's documentation, which changes between versions
        fields = {**asdict(self), "python": list(sys.version_info[:2])}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def text_line_sets(recipe: TextLineRecipe | None = None) -> ModelData:
    """The eval and calibration sets of ``recipe``, rendered and written on first use (about a second)."""
    recipe = recipe or TextLineRecipe()
    directory = cache_dir() / "data" / f"ppocr-text-lines-{recipe.key()}"
    sets = ModelData(directory / "eval.npz", directory / "calib.npz")
    if not (sets.eval_set.is_file() and sets.calibration_set.is_file()):
        directory.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(recipe.seed)
        images, labels = render_lines(recipe, recipe.eval_count, rng)
        calibration, _ = render_lines(recipe, recipe.calibration_count, rng)
        write_atomic(sets.calibration_set, lambda f: np.savez(f, x=calibration))
        write_atomic(sets.eval_set, lambda f: np.savez(f, x=images, label=labels))
    return sets


def render_lines(recipe: TextLineRecipe, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` preprocessed lines ``[count, 3, height, width]`` float32 and their classes (alternating)."""
    phrases = _words()
    fonts = _font_paths()
    images = np.empty((count, 3, recipe.height, recipe.width), dtype=np.float32)
    labels = np.arange(count, dtype=np.int64) % 2  # UPRIGHT, TURNED, UPRIGHT, ...
    for index in range(count):
        length = int(rng.integers(*recipe.words))
        start = int(rng.integers(0, len(phrases) - length))
        text = " ".join(phrases[start : start + length])
        line = _render(text, fonts[index % len(fonts)], int(rng.integers(*recipe.font_sizes)), rng)
        if labels[index] == TURNED:
            line = line[::-1, ::-1]
        images[index] = preprocess(line, recipe.height, recipe.width)
    return images, labels


def preprocess(line: np.ndarray, height: int = 48, width: int = 192) -> np.ndarray:
    """PaddleOCR's classifier input for an RGB uint8 line ``[h, w, 3]``: ``[3, height, width]`` float32."""
    from PIL import Image

    resized_width = min(width, math.ceil(height * line.shape[1] / line.shape[0]))
    resized = Image.fromarray(np.ascontiguousarray(line)).resize((resized_width, height), Image.BILINEAR)
    out = np.zeros((3, height, width), dtype=np.float32)
    out[:, :, :resized_width] = (np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return out


def _render(text: str, font_path: Path, size: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path), size)
    left, top, right, bottom = font.getbbox(text)
    margin = int(rng.integers(2, 9))
    background, ink = int(rng.integers(170, 256)), int(rng.integers(0, 100))
    image = Image.new("RGB", (right - left + 2 * margin, bottom - top + 2 * margin), (background,) * 3)
    ImageDraw.Draw(image).text((margin - left, margin - top), text, font=font, fill=(ink,) * 3)
    return np.asarray(image)


def _words() -> list[str]:
    """Words of Python's documentation topics, in reading order (so consecutive ones read as phrases)."""
    from pydoc_data.topics import topics

    text = " ".join(topics[name] for name in sorted(topics))
    return [word for word in text.split() if re.fullmatch(r"[A-Za-z][A-Za-z,.;:'()-]{0,15}", word)]


def _font_paths() -> list[Path]:
    import matplotlib

    directory = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [directory / name for name in FONTS]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise InputError(f"matplotlib's bundled fonts {missing} are missing from {directory}; reinstall matplotlib")
    return paths
