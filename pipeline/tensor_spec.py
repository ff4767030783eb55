"""The name, shape and dtype of a model input or output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor of a static shape."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(name=data["name"], shape=tuple(int(d) for d in data["shape"]), dtype=data["dtype"])

    def describe(self) -> str:
        return f"{self.name} {'x'.join(map(str, self.shape)) or 'scalar'} {self.dtype}"


def parse_shape_option(values: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``--input-shape name=1x3x224x224`` options into a dict.

    Raises
    ------
    InputError
        When a value is not ``NAME=DIMxDIM...`` with positive integer dimensions.
    """
    from edgetvm.errors import InputError

    shapes: dict[str, tuple[int, ...]] = {}
    for value in values or []:
        name, sep, dims = value.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x")) if dims else ()
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise InputError(
                f"--input-shape {value!r}: expected NAME=DIMxDIMx... with positive integers, e.g. x=1x3x224x224"
            )
        shapes[name] = shape
    return shapes
