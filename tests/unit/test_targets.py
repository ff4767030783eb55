import json

import pytest

from edgetvm.errors import TargetError
from edgetvm.targets import list_presets, resolve_target


def test_presets_have_the_boards_the_design_names():
    names = [p.name for p in list_presets()]
    assert names == ["x86", "rpi4", "rpi5", "rpi3", "rpi4-32"]


@pytest.mark.parametrize(
    "name, arch, cpu, compiler",
    [
        ("rpi4", "aarch64", "cortex-a72", "aarch64-linux-gnu-gcc"),
        ("rpi5", "aarch64", "cortex-a76", "aarch64-linux-gnu-gcc"),
        ("rpi3", "armv7l", "cortex-a53", "arm-linux-gnueabihf-gcc"),
        ("rpi4-32", "armv7l", "cortex-a72", "arm-linux-gnueabihf-gcc"),
    ],
)
def test_board_presets(name, arch, cpu, compiler):
    preset = resolve_target(name)
    assert preset.arch == arch
    assert preset.llvm["mcpu"] == cpu
    assert preset.cross_compiler == compiler
    assert preset.threads == 4
    assert not preset.is_host
    assert str(preset.tvm_target().kind) == "llvm"


def test_rpi5_has_dotprod_and_armv7_is_hard_float():
    assert "+dotprod" in resolve_target("rpi5").llvm["mattr"]
    rpi3 = resolve_target("rpi3").llvm
    assert rpi3["mtriple"] == "armv7a-linux-gnueabihf" and rpi3["mfloat-abi"] == "hard"


def test_host_preset_names_a_real_cpu_not_native():
    preset = resolve_target("x86")
    assert preset.is_host
    assert preset.llvm["mcpu"] not in ("", "native", "generic")
    preset.tvm_target()


def test_inline_json_and_file(tmp_path):
    data = {
        "name": "myboard",
        "llvm": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
        "arch": "aarch64",
        "threads": 2,
        "cross_compiler": "aarch64-linux-gnu-gcc",
    }
    assert resolve_target(json.dumps(data)).threads == 2
    assert resolve_target(json.dumps(data)).int8_depthwise is True  # the default; a target file may say false
    assert resolve_target(json.dumps({**data, "int8_depthwise": False})).int8_depthwise is False
    assert resolve_target(json.dumps(data)).int8_min_input_channels is None  # the scheme's own
    assert resolve_target(json.dumps({**data, "int8_min_input_channels": 4})).int8_min_input_channels == 4
    dynamic = resolve_target(json.dumps({**data, "int8_min_input_channels_dynamic": 8}))
    assert (dynamic.int8_min_input_channels, dynamic.int8_min_input_channels_dynamic) == (None, 8)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    assert resolve_target(str(path)).name == "myboard"


@pytest.mark.parametrize(
    "spec, words",
    [
        ("bogus", "unknown target 'bogus'"),
        ("{not json", "not valid JSON"),
        ('{"name": "a", "llvm": {"kind": "llvm"}, "arch": "mips", "threads": 1}', "arch must be one of"),
        ('{"name": "a", "llvm": {"kind": "llvm"}, "arch": "aarch64", "threads": 0}', "threads must be a positive"),
        ('{"name": "a", "llvm": {"kind": "llvm"}, "arch": "aarch64", "threads": 1, "x": 1}', "unknown field"),
        ('{"name": "a"}', "missing field"),
        (
            '{"name": "a", "llvm": {"kind": "llvm"}, "arch": "aarch64", "threads": 1, "int8_depthwise": "no"}',
            "int8_depthwise must be true or false",
        ),
        (
            '{"name": "a", "llvm": {"kind": "llvm"}, "arch": "aarch64", "threads": 1, "int8_min_input_channels": -1}',
            "int8_min_input_channels must be null or an integer >= 0, got -1",
        ),
        (
            '{"name": "a", "llvm": {"kind": "llvm"}, "arch": "aarch64", "threads": 1, '
            '"int8_min_input_channels_dynamic": "8"}',
            "int8_min_input_channels_dynamic must be null or an integer >= 0, got '8'",
        ),
    ],
)
def test_bad_targets_say_what_is_wrong(spec, words):
    with pytest.raises(TargetError, match=words):
        resolve_target(spec)
