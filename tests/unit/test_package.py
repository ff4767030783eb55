import json
import sys

import pytest

from edgetvm.errors import InputError
from edgetvm.pipeline.package import MANIFEST, Package, elf_machine, staging_directory


def test_elf_machine_of_this_python():
    assert elf_machine(sys.executable) in ("x86_64", "aarch64")


def test_elf_machine_rejects_non_elf(tmp_path):
    path = tmp_path / "x.so"
    path.write_bytes(b"hello world, not an elf file")
    with pytest.raises(InputError, match="not an ELF"):
        elf_machine(path)


def test_staging_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with staging_directory(out) as staging:
            (staging / "model.so").write_bytes(b"half")
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_staging_replaces_an_old_artifact_and_refuses_a_foreign_dir(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / MANIFEST).write_text("{}")
    with staging_directory(out) as staging:
        (staging / "new").write_text("1")
    assert (out / "new").exists() and not (out / MANIFEST).exists()
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    with pytest.raises(InputError, match="not an edgetvm artifact"):
        with staging_directory(foreign) as staging:
            (staging / "x").write_text("1")
    assert (foreign / "precious.txt").read_text() == "keep"


def test_load_rejects_missing_and_wrong_version(tmp_path):
    with pytest.raises(InputError, match="no manifest.json"):
        Package.load(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(InputError, match="format_version 99"):
        Package.load(tmp_path)
