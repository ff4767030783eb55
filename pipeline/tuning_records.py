"""A tuning database's records as their latest measurement: older records of the same schedule are dropped.

MetaSchedule's ``JSONDatabase`` appends a line per measured candidate to ``database_tuning_record.json`` and ranks
a function's records by their mean time, every record kept. A schedule measured twice (a climb re-times its
starting point in each batch; ``tune`` re-times the winners beside their defaults) then ranks by whichever
time was lower, usually the one a quieter moment of a shared host gave it. :func:`keep_latest` rewrites the file
with the last line of every (function, schedule), in the original order: after it, each schedule ranks by its
latest time, which is the one measured in the same batch as what it was compared with.

The lines kept are written back as they were read (no re-serialization), to a temporary file renamed over the
original.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgetvm.cache import write_text_atomic

# MetaSchedule records a candidate that failed to build, run or finish as 1e10 s: a record this slow is a failure,
# never a schedule to rank or apply.
FAILED_SECONDS = 1e9


def record_seconds(run_secs) -> float | None:
    """A record's (or a measurement's) mean time in seconds; None when it has none or failed."""
    values = [float(v) for v in run_secs or []]
    if not values:
        return None
    mean = sum(values) / len(values)
    return None if mean >= FAILED_SECONDS else mean


RECORDS = "database_tuning_record.json"


def record_key(line: str) -> tuple[int, str] | None:
    """``(workload index, schedule)`` of one line of the records file (``[workload, [trace, run_secs, ...]]``)."""
    try:
        workload, record = json.loads(line)
        return int(workload), json.dumps(record[0], sort_keys=True)
    except (ValueError, TypeError, IndexError, KeyError):
        return None


def keep_latest(directory: str | Path) -> int:
    """Drop every record of ``directory``'s database that a later record of the same schedule supersedes.

    Returns the number of lines dropped (0 leaves the file untouched). Lines that do not parse are kept.
    """
    path = Path(directory) / RECORDS
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    last: dict[tuple[int, str], int] = {}
    keys = [record_key(line) for line in lines]
    for index, key in enumerate(keys):
        if key is not None:
            last[key] = index
    kept = [line for index, (line, key) in enumerate(zip(lines, keys, strict=True)) if last.get(key, index) == index]
    dropped = len(lines) - len(kept)
    if dropped:
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))
    return dropped
