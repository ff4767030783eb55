"""Model inputs: read them from ``.npz`` files, check them against a package's specs, or make them."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgetvm.errors import InputError
from edgetvm.pipeline.tensor_spec import TensorSpec


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` file by name.

    Raises
    ------
    InputError
        When the file is missing or is not an ``.npz`` archive.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"inputs {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise InputError(f"inputs {path}: not a readable .npz archive ({err}); write one with numpy.savez") from err


def check_inputs(arrays: dict[str, np.ndarray], specs: list[TensorSpec], source: str) -> dict[str, np.ndarray]:
    """Check names, shapes and dtypes of ``arrays`` against ``specs``; return them in spec order.

    A single unnamed array (``arr_0`` from ``np.savez(path, x)``) is accepted for a single-input model.
    """
    if len(specs) == 1 and list(arrays) == ["arr_0"]:
        arrays = {specs[0].name: arrays["arr_0"]}
    missing = [spec.name for spec in specs if spec.name not in arrays]
    if missing:
        raise InputError(
            f"{source}: missing input(s) {missing}; the model takes {[s.describe() for s in specs]}, "
            f"the file holds {sorted(arrays)}"
        )
    checked = {}
    for spec in specs:
        array = np.asarray(arrays[spec.name])
        if tuple(array.shape) != spec.shape:
            raise InputError(
                f"{source}: input {spec.name!r} has shape {list(array.shape)}, expected {list(spec.shape)}"
            )
        if str(array.dtype) != spec.dtype:
            raise InputError(f"{source}: input {spec.name!r} has dtype {array.dtype}, expected {spec.dtype}")
        checked[spec.name] = np.ascontiguousarray(array)
    return checked


def random_inputs(specs: list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the specs' shapes and dtypes from a fixed seed: uniform [0, 1) floats, small integers."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            arrays[spec.name] = rng.random(spec.shape, dtype=np.float32).astype(dtype)
        elif dtype.kind == "b":
            arrays[spec.name] = rng.integers(0, 2, spec.shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            arrays[spec.name] = rng.integers(max(info.min, -128), min(info.max, 127), spec.shape).astype(dtype)
    return arrays


def load_inputs(path: str | Path | None, specs: list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs from ``path`` (checked) or, without a path, random ones from ``seed``."""
    if path is None:
        return random_inputs(specs, seed)
    return check_inputs(read_npz(path), specs, str(path))
