"""The build artifact: a directory holding the compiled library and ``manifest.json``.

The manifest makes the directory self-describing: what model it came from, for which target, its inputs and
outputs, how it was quantized, and the digest of the library, so that ``deploy`` can refuse an artifact built
for another machine before uploading it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetvm.errors import InputError
from edgetvm.pipeline.tensor_spec import TensorSpec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LIBRARY = "model.so"

_ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "armv7l", 0x03: "i386"}


def elf_machine(path: str | Path) -> str:
    """The CPU architecture an ELF file is built for (``x86_64``, ``aarch64``, ``armv7l``).

    Raises
    ------
    InputError
        When the file is not an ELF file.
    """
    with open(path, "rb") as stream:
        header = stream.read(20)
    if header[:4] != b"\x7fELF":
        raise InputError(f"{path}: not an ELF shared library")
    order = "little" if header[5] == 1 else "big"
    machine = int.from_bytes(header[18:20], order)
    return _ELF_MACHINES.get(machine, f"elf-machine-{machine:#x}")


@dataclass
class Package:
    """A compiled model on disk (``OUT_DIR/model.so`` + ``OUT_DIR/manifest.json``)."""

    directory: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def library_path(self) -> Path:
        return self.directory / self.manifest["library"]["file"]

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(spec) for spec in self.manifest["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(spec) for spec in self.manifest["outputs"]]

    @property
    def target_name(self) -> str:
        return self.manifest["target"]["name"]

    @property
    def arch(self) -> str:
        return self.manifest["target"]["arch"]

    @property
    def library_sha256(self) -> str:
        return self.manifest["library"]["sha256"]

    def target(self):
        """The ``TargetPreset`` recorded in the manifest."""
        from edgetvm.targets import TargetPreset

        return TargetPreset.from_json(self.manifest["target"], f"{self.directory}/{MANIFEST}")

    @classmethod
    def load(cls, directory: str | Path) -> Package:
        """Read and check an artifact directory.

        Raises
        ------
        InputError
            When the directory, its manifest or its library is missing or does not match.
        """
        directory = Path(directory)
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise InputError(f"{directory}: not an edgetvm artifact (no {MANIFEST}); make one with 'edgetvm compile'")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{manifest_path}: not valid JSON ({err}); rebuild with 'edgetvm compile'") from err
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise InputError(
                f"{manifest_path}: format_version {version!r} is not {FORMAT_VERSION}; rebuild with this edgetvm"
            )
        package = cls(directory, manifest)
        if not package.library_path.is_file():
            raise InputError(f"{directory}: library {package.library_path.name} is missing; rebuild the artifact")
        return package


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


@contextmanager
def staging_directory(out_dir: Path, marker: str = MANIFEST, kind: str = "an edgetvm artifact") -> Iterator[Path]:
    """Yield a temporary directory beside ``out_dir``; on success it replaces ``out_dir`` in one rename.

    Nothing half-written is ever left at ``out_dir``: on error the temporary directory is removed. An existing
    ``out_dir`` is replaced only when it is empty or holds ``marker`` (it is ``kind``); otherwise InputError.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield staging
        old = None
        if out_dir.exists():
            check_replaceable(out_dir, marker, kind)
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.rename(out_dir, old)
        os.rename(staging, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def check_replaceable(out_dir: Path, marker: str = MANIFEST, kind: str = "an edgetvm artifact") -> None:
    """InputError unless ``out_dir`` is absent, an empty directory, or a directory holding ``marker``."""
    if out_dir.exists() and not (out_dir / marker).is_file() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir}: exists and is not {kind}; choose another -o or remove it")
