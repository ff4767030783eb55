import dataclasses

import pytest

from edgetvm.errors import InputError
from edgetvm.pipeline.schemes import (
    QuantScheme,
    get_scheme,
    list_schemes,
    register_scheme,
    scheme_as_built,
    unregister_scheme,
    with_granularity,
)


def _scheme(**changes) -> QuantScheme:
    fields = dict(
        name="w8-test",
        description="a test scheme",
        weight_bits=8,
        weight_granularity="per-channel",
        symmetric=True,
        activation_mode="dynamic",
        calibration=None,
    )
    fields.update(changes)
    return QuantScheme(**fields)


def test_builtin_schemes():
    assert [s.name for s in list_schemes()][:2] == ["none", "w8a8-dynamic"]
    scheme = get_scheme("w8a8-dynamic")
    assert (scheme.weight_bits, scheme.weight_granularity, scheme.symmetric, scheme.activation_mode) == (
        8,
        "per-channel",
        True,
        "dynamic",
    )
    assert scheme.calibration is None and not scheme.is_float
    assert get_scheme("none").is_float
    assert scheme.to_json()["name"] == "w8a8-dynamic" and scheme.to_json()["activation_mode"] == "dynamic"


def test_schemes_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_scheme("w8a8-dynamic").weight_bits = 4


def test_registry_rejects_duplicates():
    with pytest.raises(InputError, match="'w8a8-dynamic' is already registered"):
        register_scheme(_scheme(name="w8a8-dynamic"))
    assert get_scheme("w8a8-dynamic").description.startswith("int8")


def test_register_and_unregister():
    scheme = register_scheme(_scheme())
    try:
        assert get_scheme("w8-test") is scheme
    finally:
        unregister_scheme("w8-test")
    with pytest.raises(InputError):
        get_scheme("w8-test")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"weight_bits": 7}, "field 'weight_bits' must be one of 1, 2, 4, 8, 32, got 7"),
        ({"weight_bits": True}, "field 'weight_bits' must be one of"),
        (
            {"weight_granularity": "per-row"},
            "field 'weight_granularity' must be one of 'per-channel', 'per-tensor', got 'per-row'",
        ),
        ({"symmetric": 1}, "field 'symmetric' must be one of True, False, got 1"),
        ({"activation_mode": "lazy"}, "field 'activation_mode' must be one of 'none', 'static', 'dynamic', got 'lazy'"),
        ({"activation_mode": "static"}, "field 'calibration' must name a method"),
        (
            {"activation_mode": "static", "calibration": "median"},
            "field 'calibration' must be one of 'minmax', 'percentile', 'entropy', got 'median'",
        ),
        ({"calibration": "min-max"}, "field 'calibration' must be None when activation_mode is 'dynamic'"),
        ({"name": ""}, "field 'name' must be a non-empty string"),
        ({"min_macs": -1}, "field 'min_macs' must be an integer >= 0, got -1"),
        ({"min_macs_per_input": 2.5}, "field 'min_macs_per_input' must be an integer >= 0, got 2.5"),
    ],
)
def test_bad_fields_are_refused(changes, message):
    with pytest.raises(InputError) as info:
        _scheme(**changes)
    assert message in str(info.value)


def test_unknown_scheme_lists_the_known_ones():
    with pytest.raises(InputError) as info:
        get_scheme("w4a4")
    assert str(info.value) == "unknown quantization scheme 'w4a4'; known schemes: none, w8a8-dynamic, w8a8-static"


def test_static_scheme_names_its_calibration_method():
    scheme = get_scheme("w8a8-static")
    assert scheme.activation_mode == "static" and scheme.calibration in ("minmax", "percentile", "entropy")
    assert scheme.manifest_entry()["calibration"] == scheme.calibration


def test_scheme_as_built_takes_the_manifest_fields_and_zero_for_policies_it_lacks():
    entry = get_scheme("w8a8-dynamic").manifest_entry()
    assert scheme_as_built(entry) == get_scheme("w8a8-dynamic")
    # an artifact from before min_macs_per_input (and min_macs) quantized those layers
    older = {key: value for key, value in entry.items() if key not in ("min_macs", "min_macs_per_input")}
    built = scheme_as_built({**older, "int8_depthwise": False})
    assert (built.min_macs, built.min_macs_per_input, built.min_input_channels) == (0, 0, 16)
    static = {**get_scheme("w8a8-static").manifest_entry(), "calibration": "entropy", "calibration_samples": 8}
    assert scheme_as_built(static).calibration == "entropy"


def test_per_row_activations_need_run_time_scales():
    assert _scheme(activation_granularity="per-row").activation_granularity == "per-row"
    with pytest.raises(InputError, match="'activation_granularity' can be 'per-row' only when activation_mode is"):
        _scheme(activation_mode="static", calibration="minmax", activation_granularity="per-row")
    with pytest.raises(InputError, match="must be one of 'per-tensor', 'per-row', got 'per-column'"):
        _scheme(activation_granularity="per-column")


def test_with_granularity_replaces_the_preset_fields_and_says_so():
    dynamic = get_scheme("w8a8-dynamic")
    assert with_granularity(dynamic) is dynamic
    assert with_granularity(dynamic, "per-channel", "per-tensor") is dynamic  # the preset's own values
    built = with_granularity(dynamic, activations="per-row")
    assert (built.weight_granularity, built.activation_granularity) == ("per-channel", "per-row")
    assert built.description.endswith("; built with per-channel weights and per-row activations")
    assert built.min_macs == dynamic.min_macs and built.name == "w8a8-dynamic"
    static = with_granularity(get_scheme("w8a8-static"), weights="per-tensor")
    assert (static.weight_granularity, static.activation_granularity) == ("per-tensor", "per-tensor")
    assert scheme_as_built(static.manifest_entry()) == static


@pytest.mark.parametrize(
    "scheme, weights, activations, message",
    [
        ("none", "per-tensor", None, "--weight-granularity: scheme 'none' quantizes nothing; give --quantize with"),
        ("w8a8-dynamic", "per-row", None, "--weight-granularity per-row: not a granularity; use one of per-channel"),
        (
            "w8a8-dynamic",
            None,
            "row",
            "--activation-granularity row: not a granularity; use one of per-tensor, per-row",
        ),
        (
            "w8a8-static",
            None,
            "per-row",
            "--activation-granularity per-row: w8a8-static does not compute activation scales at run time",
        ),
    ],
)
def test_with_granularity_refuses_what_the_scheme_cannot_build(scheme, weights, activations, message):
    with pytest.raises(InputError) as info:
        with_granularity(get_scheme(scheme), weights, activations)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
