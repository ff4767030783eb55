"""Wheels of the TVM runtime for a board, downloaded on the host (boards are often offline)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from edgetvm.cache import cache_dir
from edgetvm.errors import BoardError
from edgetvm.targets import TargetPreset

log = logging.getLogger(__name__)

# What the board's venv needs to run `python -m tvm.exec.rpc_server` and the Relax VM.
RUNTIME_REQUIREMENTS = (
    "apache-tvm==0.27.0.post1",
    "apache-tvm-ffi==0.1.14.post1",
    "numpy<2",
    "ml_dtypes",
    "typing_extensions",
    "psutil",
    "cloudpickle",
    "tornado",
)


def runtime_wheels(target: TargetPreset, python_tag: str) -> list[Path]:
    """The runtime wheels for ``target`` and a board Python such as ``311``, from the cache or PyPI.

    Raises
    ------
    BoardError
        When PyPI has no wheel for the board (e.g. apache-tvm for armv7l).
    """
    if not target.wheel_platforms:
        raise BoardError(f"target {target.name} names no wheel platforms; it cannot be bootstrapped")
    directory = cache_dir() / "wheels" / f"{target.arch}-cp{python_tag}"
    return download_wheels(directory, RUNTIME_REQUIREMENTS, target.wheel_platforms, python_tag, "TVM runtime")


def download_wheels(
    directory: Path, requirements: Sequence[str], platforms: Sequence[str], python_tag: str, what: str
) -> list[Path]:
    """Binary wheels of ``requirements`` and their dependencies for another machine, cached in ``directory``.

    ``directory/.complete`` lists the requirements it was downloaded for; a different list downloads again (into a
    staging directory renamed over the old one, so a failed download leaves the cache as it was).
    """
    complete = directory / ".complete"
    if complete.is_file() and complete.read_text().splitlines() == list(requirements):
        return sorted(directory.glob("*.whl"))
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--only-binary=:all:",
        "--python-version",
        python_tag,
        "--implementation",
        "cp",
        "-d",
        str(staging),
    ]
    for platform in platforms:
        command += ["--platform", platform]
    command += list(requirements)
    log.info("downloading the %s wheels (%s...) for Python %s", what, platforms[0], python_tag)
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise BoardError(f"no {what} wheels for {platforms[0]} / Python {python_tag} on the package index: {last}")
    (staging / ".complete").write_text("\n".join(requirements) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    os.rename(staging, directory)
    return sorted(directory.glob("*.whl"))
