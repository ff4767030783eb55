"""Where edgetvm keeps heavy one-time setup (board root file systems, wheels for boards), and how every file it
writes gets there whole (``write_atomic``, ``write_text_atomic``).

``$EDGETVM_CACHE`` when set, else ``$XDG_CACHE_HOME/edgetvm``, else ``~/.cache/edgetvm``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def cache_dir() -> Path:
    """The edgetvm cache directory (created on first use)."""
    root = os.environ.get("EDGETVM_CACHE")
    if root:
        path = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "edgetvm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(binary file)`` on a temporary file beside ``path``, then rename it onto ``path``: a reader (or a
    run killed half-way) never sees a half-written file. Creates ``path``'s directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(partial, "wb") as f:
            write(f)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """``write_atomic`` for UTF-8 text."""
    write_atomic(path, lambda f: f.write(text.encode()))
