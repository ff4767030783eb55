"""Board bootstrap over SSH: check the board, install the TVM runtime from wheels pushed by the host."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from edgetvm.deploy.runtime_wheels import runtime_wheels
from edgetvm.deploy.ssh import SSHConnection, quote
from edgetvm.errors import BoardError
from edgetvm.targets import TargetPreset

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
MARKER = "runtime.json"


@dataclass(frozen=True)
class BoardFacts:
    """What the board says about itself."""

    machine: str
    uname: str
    os: str
    python: str
    cpu_count: int

    def to_json(self) -> dict:
        return {
            "machine": self.machine,
            "uname": self.uname,
            "os": self.os,
            "python": self.python,
            "cpu_count": self.cpu_count,
        }


def board_facts(conn: SSHConnection) -> BoardFacts:
    """Architecture, OS, Python and CPU count, in one round trip (no Python started: it is slow under qemu)."""
    script = (
        'uname -m; uname -a; (. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME") || echo unknown; '
        "(python3 --version 2>&1 || echo none); nproc"
    )
    lines = conn.run(script, timeout=60).stdout.splitlines()
    if len(lines) < 5:
        raise BoardError(f"board {conn.board.name!r}: could not read its facts (got {lines!r})")
    return BoardFacts(machine=lines[0], uname=lines[1], os=lines[2], python=lines[3].strip(), cpu_count=int(lines[4]))


def check_board(facts: BoardFacts, target: TargetPreset, board_name: str) -> str:
    """Check that the board can run ``target`` code; return its Python tag (``311``)."""
    if facts.machine != target.arch:
        raise BoardError(
            f"board {board_name!r} is {facts.machine}, but target {target.name} builds {target.arch} code: "
            "compile for a matching target or pick another board"
        )
    match = re.match(r"Python (\d+)\.(\d+)", facts.python)
    if not match:
        raise BoardError(f"board {board_name!r} has no python3 ({facts.python}): install python3 and python3-venv")
    return match.group(1) + match.group(2)


def ensure_runtime(conn: SSHConnection, target: TargetPreset, progress: Progress | None = None) -> BoardFacts:
    """Install the TVM runtime into ``WORKDIR/venv`` on the board, only when what is there differs.

    Returns the board's facts.
    """
    say = progress or (lambda message: log.info("%s", message))
    facts = board_facts(conn)
    python_tag = check_board(facts, target, conn.board.name)
    workdir = conn.board.remote_workdir
    wheels = runtime_wheels(target, python_tag)
    wanted = {"wheels": sorted(w.name for w in wheels), "sha256": _digest(wheels)}
    marker = conn.run(f"cat {quote(workdir)}/venv/{MARKER} 2>/dev/null || true").stdout
    if marker.strip() and _same(marker, wanted):
        say(f"TVM runtime on {conn.board.name} is up to date")
        return facts
    say(f"installing the TVM runtime on {conn.board.name} ({len(wheels)} wheels)")
    conn.run(f"rm -rf {quote(workdir)}/venv {quote(workdir)}/wheels && mkdir -p {quote(workdir)}/wheels")
    for index, wheel in enumerate(wheels, 1):
        say(f"uploading {wheel.name} ({index}/{len(wheels)})")
        conn.put(wheel, f"{workdir}/wheels/{wheel.name}")
    say("creating the venv and installing wheels (minutes on a slow or emulated board)")
    requirements = " ".join(quote(f"{workdir}/wheels/{w.name}") for w in wheels)
    conn.run(
        f"cd {quote(workdir)} && python3 -m venv venv && venv/bin/pip install --no-index --no-cache-dir "
        f"--disable-pip-version-check --quiet {requirements}",
        timeout=1800,
    )
    conn.run(
        f"cd {quote(workdir)} && venv/bin/python -c 'import tvm, tvm.relax, tvm.rpc' && rm -rf wheels", timeout=600
    )
    conn.run(f"printf %s {quote(json.dumps(wanted))} > {quote(workdir)}/venv/{MARKER}")
    say(f"TVM runtime installed on {conn.board.name}")
    return facts


def _digest(wheels) -> str:
    digest = hashlib.sha256()
    for wheel in wheels:
        digest.update(wheel.name.encode())
        digest.update(str(wheel.stat().st_size).encode())
    return digest.hexdigest()


def _same(marker: str, wanted: dict) -> bool:
    try:
        return json.loads(marker) == wanted
    except json.JSONDecodeError:
        return False
