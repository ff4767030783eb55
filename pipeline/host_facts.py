"""Facts about this host for benchmark reports: CPU, cores, OS and the versions of every runtime measured."""

from __future__ import annotations

import datetime as dt
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

# distribution name -> key in the report
VERSIONED_PACKAGES = {
    "edgetvm": "edgetvm",
    "apache-tvm": "tvm",
    "onnxruntime": "onnxruntime",
    "tflite-runtime": "tflite-runtime",
    "onnx": "onnx",
    "numpy": "numpy",
}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's marketing name (``model name``, or ``Model``/``Hardware`` on ARM boards), else the machine."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor() or platform.machine()
    return cpu_model_in(text) or platform.machine()


def cpu_model_in(cpuinfo_text: str) -> str | None:
    """The CPU's name in the text of a ``/proc/cpuinfo`` (this machine's or a board's), or None."""
    fields: dict[str, str] = {}
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip(), value.strip())
    for key in ("model name", "Model", "Hardware", "cpu model"):
        if key in fields:
            return fields[key]
    return None


def package_versions() -> dict[str, str | None]:
    """Installed versions of the runtimes and libraries a benchmark depends on (None when not installed)."""
    versions: dict[str, str | None] = {}
    for distribution, key in VERSIONED_PACKAGES.items():
        try:
            versions[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def host_facts(threads: int, tvm_threads: int | None = None) -> dict[str, Any]:
    """This machine as a benchmark report records it."""
    uname = os.uname()
    return {
        "cpu": cpu_model(),
        "machine": uname.machine,
        "cores": os.cpu_count(),
        "available_cores": len(os.sched_getaffinity(0)),
        "threads": threads,
        "tvm_threads": tvm_threads,
        "emulated": False,
        "os": f"{uname.sysname} {uname.release}",
        "python": platform.python_version(),
        "versions": package_versions(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
