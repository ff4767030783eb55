"""Target presets as data.

A preset says everything the pipeline and the deploy step need to know about a target: the LLVM target
(a JSON dict, as TVM 0.27 wants it), the cross compiler that links the shared library, the number of
threads to run with, and what the board runtime needs (CPU architecture as ``uname -m`` prints it, and the
wheel platform tags that the board's Python accepts). A new board is a new entry in ``_PRESETS``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetvm.errors import TargetError

_ARCHES = ("x86_64", "aarch64", "armv7l")


@dataclass(frozen=True)
class TargetPreset:
    """A compilation target and the facts about the machine that runs its code.

    Parameters
    ----------
    name : str
        Short name used on the command line (``rpi4``).
    description : str
        One line for ``edgetvm targets``.
    llvm : dict
        The TVM target as a JSON dict (``{"kind": "llvm", "mtriple": ..., "mcpu": ...}``).
    arch : str
        The machine as ``uname -m`` prints it on the device: ``x86_64``, ``aarch64`` or ``armv7l``.
    threads : int
        Worker threads the TVM runtime uses on the device (its core count).
    cross_compiler : str or None
        Compiler driver that links the shared library; ``None`` for the host's own ``cc``.
    wheel_platforms : tuple of str
        ``pip download --platform`` tags for the device's TVM runtime wheels (empty for the host).
    emulated_board : bool
        Whether ``edgetvm board`` can stand in for this device when no real board is configured.
    int8_depthwise : bool
        Whether int8 schemes quantize depthwise convs here. Off where int8 depthwise is no faster than float:
        a depthwise conv has no channel sum for widening multiply-adds (x86's ``vpmaddwd``) to pair up, so it
        buys nothing and costs a quantize of every block's output (BlazeFace w8a8-static on this AVX2 host:
        1.31 ms with int8 depthwise, 1.00 ms without, float 1.13 ms; one thread). Such layers stay float like the
        scheme's narrow ones, and the manifest says so.
    int8_min_input_channels : int or None
        Replaces the static int8 schemes' ``min_input_channels`` here: the fewest input channels a one-group conv
        needs to be quantized. None keeps the scheme's (16: the dot-form kernels sum at least 16 channels). x86
        says 8: its ``vpmaddwd`` pair kernel needs only pairs of channels, and the trained CNN's 3x3 8 -> 16
        conv, its heaviest layer, made its ``w8a8-static`` build 0.97x -> 1.09x of float. Dynamic schemes take
        ``int8_min_input_channels_dynamic`` instead.
    int8_min_input_channels_dynamic : int or None
        The same for dynamic schemes (``pipeline.quantize.scheme_for_target`` says why they differ). x86 says 8
        where the CPU has VNNI (``llvm_has_vnni``), whose ``vpdpbusd`` quad kernel makes the trained CNN's 8 -> 16
        conv pay for its run-time quantize too (``w8a8-dynamic`` 1.07x -> 1.12x of float); None elsewhere: with
        the pair kernel it went 0.99x -> 0.90x.
    """

    name: str
    description: str
    llvm: dict[str, Any]
    arch: str
    threads: int
    cross_compiler: str | None = None
    wheel_platforms: tuple[str, ...] = field(default=())
    emulated_board: bool = False
    int8_depthwise: bool = True
    int8_min_input_channels: int | None = None
    int8_min_input_channels_dynamic: int | None = None

    def __post_init__(self) -> None:
        if self.arch not in _ARCHES:
            raise TargetError(f"target {self.name!r}: arch must be one of {', '.join(_ARCHES)}, got {self.arch!r}")
        if self.llvm.get("kind") != "llvm":
            raise TargetError(f"target {self.name!r}: llvm.kind must be 'llvm', got {self.llvm.get('kind')!r}")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise TargetError(f"target {self.name!r}: threads must be a positive integer, got {self.threads!r}")
        if not isinstance(self.int8_depthwise, bool):
            raise TargetError(
                f"target {self.name!r}: int8_depthwise must be true or false, got {self.int8_depthwise!r}"
            )
        for name in ("int8_min_input_channels", "int8_min_input_channels_dynamic"):
            channels = getattr(self, name)
            if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool) or channels < 0):
                raise TargetError(f"target {self.name!r}: {name} must be null or an integer >= 0, got {channels!r}")

    @property
    def is_host(self) -> bool:
        """True when code for this target runs on this machine without a board."""
        return self.cross_compiler is None and self.arch == os.uname().machine

    def tvm_target(self):
        """The ``tvm.target.Target`` for ``tvm.compile``."""
        import tvm

        try:
            return tvm.target.Target(dict(self.llvm))
        except Exception as err:  # TVM raises its own error types for a bad target dict
            raise TargetError(f"target {self.name!r}: TVM rejects llvm={json.dumps(self.llvm)}: {err}") from err

    def check_toolchain(self) -> None:
        """Raise ``TargetError`` when the cross compiler is not installed."""
        if self.cross_compiler and shutil.which(self.cross_compiler) is None:
            raise TargetError(
                f"target {self.name!r} needs the cross compiler {self.cross_compiler!r}, which is not on PATH: "
                f"install it (Debian: apt-get install gcc-{self.cross_compiler.removesuffix('-gcc')})"
            )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["wheel_platforms"] = list(self.wheel_platforms)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> TargetPreset:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise TargetError(f"target from {source}: unknown field(s) {sorted(unknown)}; allowed: {sorted(known)}")
        missing = {"name", "llvm", "arch", "threads"} - set(data)
        if missing:
            raise TargetError(f"target from {source}: missing field(s) {sorted(missing)}")
        data = dict(data)
        data.setdefault("description", f"custom target from {source}")
        data["wheel_platforms"] = tuple(data.get("wheel_platforms", ()))
        return cls(**data)


_AARCH64_WHEELS = (
    "manylinux_2_28_aarch64",
    "manylinux_2_17_aarch64",
    "manylinux2014_aarch64",
    "manylinux_2_34_aarch64",
)
_ARMV7_WHEELS = ("manylinux_2_31_armv7l", "manylinux_2_17_armv7l", "manylinux2014_armv7l", "linux_armv7l")
_ARMV7_LLVM = {
    "kind": "llvm",
    "mtriple": "armv7a-linux-gnueabihf",
    "mattr": ["+neon", "+vfp4", "+thumb2"],
    "mfloat-abi": "hard",
}


def llvm_has_vnni(target) -> bool:
    """Whether the ``tvm.target.Target`` has x86 VNNI on ymm registers: AVX512-VNNI with AVX512-VL, or AVX-VNNI
    (``vpdpbusd``, the int8 quad kernel's instruction)."""
    from tvm.target import codegen

    return bool(codegen.llvm_cpu_has_features("avxvnni", target)) or all(
        codegen.llvm_cpu_has_features(feature, target) for feature in ("avx512vnni", "avx512vl")
    )


def _host_preset() -> TargetPreset:
    import tvm

    cpu = tvm.target.codegen.llvm_get_system_cpu()
    cores = len(os.sched_getaffinity(0))
    llvm = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": cpu, "num-cores": cores}
    return TargetPreset(
        name="x86",
        description=f"this host: x86_64 {cpu}, {cores} threads",
        llvm=llvm,
        arch="x86_64",
        threads=cores,
        int8_depthwise=False,  # AVX2 / AVX-512: see TargetPreset
        int8_min_input_channels=8,  # the vpmaddwd pair kernel: see TargetPreset
        int8_min_input_channels_dynamic=8 if llvm_has_vnni(tvm.target.Target(llvm)) else None,  # the quad kernel
    )


def _static(preset: TargetPreset) -> Callable[[], TargetPreset]:
    return lambda: preset


_PRESETS: dict[str, Callable[[], TargetPreset]] = {
    "x86": _host_preset,
    "rpi4": _static(
        TargetPreset(
            name="rpi4",
            description="Raspberry Pi 4 (64-bit OS): aarch64 Cortex-A72, NEON, 4 cores",
            llvm={
                "kind": "llvm",
                "mtriple": "aarch64-linux-gnu",
                "mcpu": "cortex-a72",
                "mattr": ["+neon"],
                "num-cores": 4,
            },
            arch="aarch64",
            threads=4,
            cross_compiler="aarch64-linux-gnu-gcc",
            wheel_platforms=_AARCH64_WHEELS,
            emulated_board=True,
        )
    ),
    "rpi5": _static(
        TargetPreset(
            name="rpi5",
            description="Raspberry Pi 5: aarch64 Cortex-A76, NEON + dot-product, 4 cores",
            llvm={
                "kind": "llvm",
                "mtriple": "aarch64-linux-gnu",
                "mcpu": "cortex-a76",
                "mattr": ["+neon", "+dotprod"],
                "num-cores": 4,
            },
            arch="aarch64",
            threads=4,
            cross_compiler="aarch64-linux-gnu-gcc",
            wheel_platforms=_AARCH64_WHEELS,
            emulated_board=True,
        )
    ),
    "rpi3": _static(
        TargetPreset(
            name="rpi3",
            description="Raspberry Pi 3 (32-bit OS): armv7 hard-float Cortex-A53, NEON, 4 cores",
            llvm={**_ARMV7_LLVM, "mcpu": "cortex-a53", "num-cores": 4},
            arch="armv7l",
            threads=4,
            cross_compiler="arm-linux-gnueabihf-gcc",
            wheel_platforms=_ARMV7_WHEELS,
        )
    ),
    "rpi4-32": _static(
        TargetPreset(
            name="rpi4-32",
            description="Raspberry Pi 4 (32-bit OS): armv7 hard-float Cortex-A72, NEON, 4 cores",
            llvm={**_ARMV7_LLVM, "mcpu": "cortex-a72", "num-cores": 4},
            arch="armv7l",
            threads=4,
            cross_compiler="arm-linux-gnueabihf-gcc",
            wheel_platforms=_ARMV7_WHEELS,
        )
    ),
}


def list_presets() -> list[TargetPreset]:
    """All built-in presets, in the order ``edgetvm targets`` shows them."""
    return [make() for make in _PRESETS.values()]


def resolve_target(spec: str) -> TargetPreset:
    """Turn a ``--target`` value into a preset.

    ``spec`` is a preset name (``rpi4``), inline JSON (``{"name": ..., "llvm": {...}, ...}``) or the path
    of a JSON file holding the same object.
    """
    if spec in _PRESETS:
        return _PRESETS[spec]()
    text, source = None, None
    if spec.lstrip().startswith("{"):
        text, source = spec, "inline JSON"
    elif Path(spec).is_file():
        text, source = Path(spec).read_text(), spec
    if text is None:
        raise TargetError(
            f"unknown target {spec!r}: use one of {', '.join(_PRESETS)}, inline JSON or a JSON file "
            "(see 'edgetvm targets')"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise TargetError(f"target from {source} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise TargetError(f"target from {source} must be a JSON object, got {type(data).__name__}")
    return TargetPreset.from_json(data, source)
