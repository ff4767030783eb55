"""onnxruntime and tflite-runtime on a board, for ``edgetvm bench``'s baselines: wheels and a venv of their own.

The baselines live in ``WORKDIR/baselines-venv``, beside the TVM runtime's ``WORKDIR/venv`` and never inside it,
with their own marker: installing or upgrading them leaves the TVM runtime (and whoever is using it) alone. The
wheels are downloaded on the host (``pip download --platform``) for the board's glibc and Python, at the
versions installed on the host, so that host and board benches compare the same runtime releases.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from edgetvm.cache import cache_dir
from edgetvm.deploy.runtime_wheels import download_wheels
from edgetvm.deploy.ssh import SSHConnection, quote
from edgetvm.errors import BoardError

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
VENV = "baselines-venv"
MARKER = "baselines.json"
# distribution -> the requirement when the host does not have it installed
BASELINE_PACKAGES = {"onnxruntime": "onnxruntime", "tflite-runtime": "tflite-runtime"}
# tflite-runtime is built against numpy 1.x; the TVM runtime's venv pins the same.
EXTRA_REQUIREMENTS = ("numpy<2",)
OLDEST_GLIBC_MINOR = 17  # manylinux2014


def baseline_requirements() -> tuple[str, ...]:
    """The runtimes at the host's versions (so host and board measure the same releases), and numpy 1.x."""
    pinned = []
    for distribution, requirement in BASELINE_PACKAGES.items():
        try:
            pinned.append(f"{distribution}=={metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            pinned.append(requirement)
    return (*pinned, *EXTRA_REQUIREMENTS)


def wheel_platforms(arch: str, glibc: str) -> tuple[str, ...]:
    """``pip download --platform`` tags a board with ``glibc`` (``glibc 2.36``) can install, newest last.

    tflite-runtime's aarch64 wheels are ``manylinux_2_34``: the TVM runtime's fixed tags do not reach them.
    """
    match = re.search(r"(\d+)\.(\d+)", glibc)
    if not match or match.group(1) != "2":
        raise BoardError(f"cannot read the board's C library version from {glibc!r} (getconf GNU_LIBC_VERSION)")
    newest = int(match.group(2))
    return (
        "manylinux2014_" + arch,
        *(f"manylinux_2_{minor}_{arch}" for minor in range(OLDEST_GLIBC_MINOR, newest + 1)),
    )


def board_glibc(conn: SSHConnection) -> str:
    return conn.run("getconf GNU_LIBC_VERSION", timeout=60).stdout.strip()


def ensure_baseline_runtime(conn: SSHConnection, arch: str, python_tag: str, progress: Progress | None = None) -> str:
    """Install onnxruntime and tflite-runtime into the board's baselines venv when its marker differs.

    Returns the path of that venv's Python on the board.
    """
    say = progress or (lambda message: log.info("%s", message))
    requirements = baseline_requirements()
    platforms = wheel_platforms(arch, board_glibc(conn))
    directory = cache_dir() / "wheels" / f"{arch}-cp{python_tag}-baselines-{_short_digest(requirements)}"
    wheels = download_wheels(directory, requirements, platforms, python_tag, "onnxruntime / tflite-runtime")
    workdir = conn.board.remote_workdir
    venv = f"{workdir}/{VENV}"
    wanted = {"requirements": list(requirements), "wheels": sorted(w.name for w in wheels)}
    marker = conn.run(f"cat {quote(venv)}/{MARKER} 2>/dev/null || true").stdout
    if marker.strip() and _same(marker, wanted):
        say(f"onnxruntime / tflite-runtime on {conn.board.name} are up to date")
        return f"{venv}/bin/python"
    staging = f"{workdir}/baselines-wheels"
    conn.run(f"rm -rf {quote(venv)} {quote(staging)} && mkdir -p {quote(staging)}")
    for index, wheel in enumerate(wheels, 1):
        say(f"uploading {wheel.name} ({index}/{len(wheels)})")
        conn.put(wheel, f"{staging}/{wheel.name}")
    say(f"installing onnxruntime and tflite-runtime on {conn.board.name} (minutes on an emulated board)")
    requirements_args = " ".join(quote(f"{staging}/{w.name}") for w in wheels)
    conn.run(
        f"python3 -m venv {quote(venv)} && {quote(venv)}/bin/pip install --no-index --no-cache-dir "
        f"--disable-pip-version-check --quiet {requirements_args}",
        timeout=1800,
    )
    check = "import numpy, onnxruntime, tflite_runtime.interpreter"
    conn.run(f"{quote(venv)}/bin/python -c {quote(check)} && rm -rf {quote(staging)}", timeout=600)
    conn.run(f"printf %s {quote(json.dumps(wanted))} > {quote(venv)}/{MARKER}")
    say(f"onnxruntime and tflite-runtime installed on {conn.board.name}")
    return f"{venv}/bin/python"


def _short_digest(requirements: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:10]


def _same(marker: str, wanted: dict) -> bool:
    try:
        return json.loads(marker) == wanted
    except json.JSONDecodeError:
        return False


def worker_script() -> Path:
    """The worker pushed to the board (``baseline_worker.py``, beside this file)."""
    return Path(__file__).with_name("baseline_worker.py")
