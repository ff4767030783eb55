"""Quantization schemes: frozen presets in one registry, chosen by name (``--quantize w8a8-dynamic``).

Adding a scheme is one ``register_scheme(QuantScheme(...))`` here plus its pass list in ``pipeline/quantize.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields

from edgetvm.errors import InputError
from edgetvm.pipeline.calibration_stats import CalibrationMethod

# The fields that say which layers a scheme leaves float. An artifact built before one existed quantized every
# such layer (``scheme_as_built``).
LAYER_POLICY_FIELDS = ("min_input_channels", "min_macs", "min_macs_per_input")

WEIGHT_GRANULARITIES = ("per-channel", "per-tensor")
ACTIVATION_MODES = ("none", "static", "dynamic")
ACTIVATION_GRANULARITIES = ("per-tensor", "per-row")
WEIGHT_BITS = (1, 2, 4, 8, 32)
CALIBRATION_METHODS = tuple(method.value for method in CalibrationMethod)


@dataclass(frozen=True)
class QuantScheme:
    """How weights and activations are quantized.

    Attributes
    ----------
    name : str
        The registry key, e.g. ``w8a8-dynamic``.
    description : str
        One line for ``edgetvm schemes``.
    weight_bits : int
        Bits per weight; 32 means float weights.
    weight_granularity : str
        ``per-channel`` (one scale per output channel) or ``per-tensor``.
    symmetric : bool
        Zero point fixed at 0.
    activation_mode : str
        ``none`` (float activations), ``static`` (scales from calibration) or ``dynamic`` (scales at run time).
    calibration : str or None
        The calibration method for static activations (``minmax``, ``percentile``, ``entropy``); None otherwise.
    activation_granularity : str
        ``per-tensor`` (one activation scale per layer input) or, for dynamic activations, ``per-row``: each row
        of a matmul's input (its last axis: a token's or a sample's features) gets its own scale, so one row's
        outlier costs no other row precision and a row's result does not depend on the rows batched with it.
        Convs keep one scale per input tensor.
    min_input_channels : int
        conv2d layers (one group) with fewer input channels stay float: a network's first layer over 3 colour
        channels has no reduction for the int8 kernels to vectorise, and ran 2.8x slower in int8 than in float
        (BlazeFace, x86). 0 quantizes every layer.
    min_macs : int
        Layers (conv2d, matmul) doing fewer multiply-adds per run stay float. A dynamic scheme quantizes each
        layer's input at run time, a ``max|x|`` pass, a quantize pass and their kernel launches, which cost more
        than an int8 kernel saves on a squeeze-excite's 200 -> 50 vector. 0 quantizes every layer.
    min_macs_per_input : int
        Layers (conv2d, matmul; depthwise convs excepted) doing fewer multiply-adds per input value stay float. A
        dynamic scheme's quantization of a layer input reads it twice (``max|x|``, then the quantize); a layer
        that uses each input value for few multiply-adds (a 1x1 projection to 16 channels: 16) saves less in int8
        than that costs. Depthwise convs are the target's choice (``TargetPreset.int8_depthwise``). 0 quantizes
        every layer.
    """

    name: str
    description: str
    weight_bits: int
    weight_granularity: str
    symmetric: bool
    activation_mode: str
    calibration: str | None = None
    activation_granularity: str = "per-tensor"
    min_input_channels: int = 0
    min_macs: int = 0
    min_macs_per_input: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"quantization scheme: field 'name' must be a non-empty string, got {self.name!r}")
        _check_choice(self.name, "weight_bits", WEIGHT_BITS, self.weight_bits)
        _check_choice(self.name, "weight_granularity", WEIGHT_GRANULARITIES, self.weight_granularity)
        _check_choice(self.name, "symmetric", (True, False), self.symmetric)
        _check_choice(self.name, "activation_mode", ACTIVATION_MODES, self.activation_mode)
        _check_choice(self.name, "activation_granularity", ACTIVATION_GRANULARITIES, self.activation_granularity)
        if self.activation_granularity == "per-row" and self.activation_mode != "dynamic":
            raise InputError(
                f"quantization scheme {self.name!r}: field 'activation_granularity' can be 'per-row' only when "
                f"activation_mode is 'dynamic' (scales computed at run time), got {self.activation_mode!r}"
            )
        if self.activation_mode == "static" and not self.calibration:
            raise InputError(
                f"quantization scheme {self.name!r}: field 'calibration' must name a method when "
                f"activation_mode is 'static', got {self.calibration!r}"
            )
        for field in LAYER_POLICY_FIELDS:
            value = getattr(self, field)
            if not isinstance(value, int) or value < 0:
                raise InputError(
                    f"quantization scheme {self.name!r}: field {field!r} must be an integer >= 0, got {value!r}"
                )
        if self.activation_mode == "static":
            _check_choice(self.name, "calibration", CALIBRATION_METHODS, self.calibration)
        if self.activation_mode != "static" and self.calibration is not None:
            raise InputError(
                f"quantization scheme {self.name!r}: field 'calibration' must be None when activation_mode is "
                f"{self.activation_mode!r}, got {self.calibration!r}"
            )

    @property
    def is_float(self) -> bool:
        """True for the scheme that leaves the model as imported."""
        return self.weight_bits == 32 and self.activation_mode == "none"

    def to_json(self) -> dict:
        """The scheme's fields."""
        return asdict(self)

    def manifest_entry(self) -> str | dict:
        """``manifest.json``'s ``quantization``: ``"none"`` for float builds, else the scheme's fields."""
        return "none" if self.is_float else self.to_json()


def _check_choice(scheme: str, field: str, allowed: tuple, value) -> None:
    # bool is an int subclass: compare types too, so that weight_bits=True or symmetric=1 are refused
    if not any(type(value) is type(choice) and value == choice for choice in allowed):
        listed = ", ".join(repr(choice) for choice in allowed)
        raise InputError(f"quantization scheme {scheme!r}: field {field!r} must be one of {listed}, got {value!r}")


_SCHEMES: dict[str, QuantScheme] = {}


def register_scheme(scheme: QuantScheme) -> QuantScheme:
    """Add ``scheme`` to the registry.

    Raises
    ------
    InputError
        When a scheme of the same name is already registered.
    """
    if scheme.name in _SCHEMES:
        raise InputError(f"quantization scheme {scheme.name!r} is already registered")
    _SCHEMES[scheme.name] = scheme
    return scheme


def unregister_scheme(name: str) -> None:
    """Remove a scheme (for tests and plug-ins that replace one); unknown names are ignored."""
    _SCHEMES.pop(name, None)


def get_scheme(name: str) -> QuantScheme:
    """The registered scheme called ``name``.

    Raises
    ------
    InputError
        For an unknown name; the message lists the known ones.
    """
    try:
        return _SCHEMES[name]
    except KeyError:
        raise InputError(
            f"unknown quantization scheme {name!r}; known schemes: {', '.join(sorted(_SCHEMES))}"
        ) from None


def scheme_as_built(entry: dict) -> QuantScheme:
    """The scheme an artifact was built with, from its manifest's ``quantization`` entry: the registered scheme
    of that name with the fields the entry records; a layer policy it does not record (an older edgetvm's build)
    is 0, which is how that build quantized.

    Raises
    ------
    InputError
        For an unknown scheme name, or recorded fields that are not valid.
    """
    registered = get_scheme(entry["name"])
    values = {
        field.name: entry.get(field.name, 0 if field.name in LAYER_POLICY_FIELDS else getattr(registered, field.name))
        for field in fields(QuantScheme)
    }
    return QuantScheme(**values)


def with_granularity(scheme: QuantScheme, weights: str | None = None, activations: str | None = None) -> QuantScheme:
    """``scheme`` with its weight and activation granularity replaced by the ones given (None keeps the preset's):
    ``compile --weight-granularity per-tensor --activation-granularity per-row``. The manifest records the result.

    Raises
    ------
    InputError
        For a granularity given to the float scheme, an unknown one, or per-row activations of a scheme whose
        activation scales are not computed at run time.
    """
    if weights is None and activations is None:
        return scheme
    given = [f"--{kind}-granularity" for kind, value in (("weight", weights), ("activation", activations)) if value]
    if scheme.is_float:
        raise InputError(
            f"{', '.join(given)}: scheme {scheme.name!r} quantizes nothing; give --quantize with a quantized scheme "
            f"({', '.join(s.name for s in list_schemes() if not s.is_float)})"
        )
    for option, value, allowed in (
        ("--weight-granularity", weights, WEIGHT_GRANULARITIES),
        ("--activation-granularity", activations, ACTIVATION_GRANULARITIES),
    ):
        if value is not None and value not in allowed:
            raise InputError(f"{option} {value}: not a granularity; use one of {', '.join(allowed)}")
    if activations == "per-row" and scheme.activation_mode != "dynamic":
        dynamic = ", ".join(s.name for s in list_schemes() if s.activation_mode == "dynamic")
        raise InputError(
            f"--activation-granularity per-row: {scheme.name} does not compute activation scales at run time "
            f"(activation mode {scheme.activation_mode!r}); use a dynamic scheme ({dynamic})"
        )
    weights, activations = weights or scheme.weight_granularity, activations or scheme.activation_granularity
    if (weights, activations) == (scheme.weight_granularity, scheme.activation_granularity):
        return scheme
    return dataclasses.replace(
        scheme,
        description=f"{scheme.description}; built with {weights} weights and {activations} activations",
        weight_granularity=weights,
        activation_granularity=activations,
    )


def list_schemes() -> list[QuantScheme]:
    """Every registered scheme, in registration order."""
    return list(_SCHEMES.values())


NONE = register_scheme(
    QuantScheme(
        name="none",
        description="float32 as imported, no quantization",
        weight_bits=32,
        weight_granularity="per-tensor",
        symmetric=True,
        activation_mode="none",
    )
)

# The PP-OCR classifier's squeeze-excite layers do 2-10 thousand multiply-adds and its last layer 400; its
# smallest other layer, 49 thousand.
MIN_MACS_DYNAMIC = 1 << 15
# x86, interleaved, 3-5 loads a build, w8a8-dynamic vs untuned float. With the VNNI quad kernel (Zen 4): PP-OCR
# classifier 0.98x quantizing every layer; 1.03x with layers under 16 multiply-adds an input value float, 1.07x
# under 24 (its 1x1 projections to 8 and 16 channels), 1.06x under 32 and under 40. BlazeFace: 1.22x, 1.20x,
# 1.20x, 1.15x, 1.16x (its 1x1 24 -> 24 and 24 -> 28 convs at 64x64 pay for their quantize passes from 24).
# With the pair kernel only (before it) 40 had been as good as 24 or better: PP-OCR 1.01x under 24, 1.02x under
# 40; BlazeFace 1.06x, 1.08x.
# Once the quantize ran in the int8 layer's own kernel (``QuantizeInConsumer``), a layer's quantize cost less and
# 16 overtook 24 (Zen 4, interleaved, two quiet runs): PP-OCR 231.4 -> 223.5 and 225.7 -> 219.9 us (float 267-269;
# under 8, 229.2 and 226.4 us); BlazeFace's and the CNN's builds are the same under 16 as under 24.
MIN_MACS_PER_INPUT_DYNAMIC = 16

W8A8_DYNAMIC = register_scheme(
    QuantScheme(
        name="w8a8-dynamic",
        description="int8 symmetric per-output-channel weights, int8 per-tensor activations scaled at run time, "
        "requantized between layers",
        weight_bits=8,
        weight_granularity="per-channel",
        symmetric=True,
        activation_mode="dynamic",
        min_input_channels=16,
        min_macs=MIN_MACS_DYNAMIC,
        min_macs_per_input=MIN_MACS_PER_INPUT_DYNAMIC,
    )
)

W8A8_STATIC = register_scheme(
    QuantScheme(
        name="w8a8-static",
        description="int8 symmetric per-output-channel weights, int8 per-tensor activations with calibrated "
        "scales (--calib), requantized between layers",
        weight_bits=8,
        weight_granularity="per-channel",
        symmetric=True,
        activation_mode="static",
        calibration="percentile",
        min_input_channels=16,
    )
)
