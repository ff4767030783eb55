"""Where edgetvm keeps heavy one-time setup (board root file systems, wheels for boards).

``$EDGETVM_CACHE`` when set, else ``$XDG_CACHE_HOME/edgetvm``, else ``~/.cache/edgetvm``.
"""

from __future__ import annotations

import os
from pathlib import Path


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
