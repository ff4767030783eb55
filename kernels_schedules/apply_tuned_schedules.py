"""Pass: give each PrimFunc the best schedule a tuning database recorded for it (``edgetvm compile --db``).

Runs before ``ApplyCPUSchedules``, which skips the functions scheduled here ("prescheduled") and gives the
others their default schedule. Records that failed (MetaSchedule stores ``1e10`` s) are never applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import tvm
from tvm import tirx
from tvm.target import Target

from edgetvm.kernels_schedules.apply_schedules import is_scheduled
from edgetvm.pipeline.tuning_records import record_seconds

log = logging.getLogger(__name__)


@dataclass
class TunedReport:
    """Which functions took a database record (and its time), and which had none and keep the defaults."""

    db: str
    applied: dict[str, float] = field(default_factory=dict)  # function -> recorded ms
    untuned: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "db": self.db,
            "format": "MetaSchedule JSONDatabase (database_workload.json, database_tuning_record.json)",
            "records_used": len(self.applied),
            "applied_ms": dict(sorted(self.applied.items())),
            "tasks_untuned": sorted(self.untuned),
        }


def best_record(database, workload: tvm.IRModule):
    """The fastest record of ``workload`` that did not fail, or None (``pipeline.tune`` ranks with it too)."""
    if not database.has_workload(workload):
        return None
    for record in database.get_top_k(database.commit_workload(workload), 1):
        if record_seconds(record.run_secs) is not None:
            return record
    return None


@tvm.transform.module_pass(opt_level=0, name="ApplyTunedSchedules")
class ApplyTunedSchedules:
    """Schedule every PrimFunc that has a valid record in ``database`` (a MetaSchedule ``Database``)."""

    def __init__(self, target: Target, database, report: TunedReport):
        self.target = target
        self.database = database
        self.report = report

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        from tvm import s_tir

        updated = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
                continue
            workload = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
            record = best_record(self.database, workload)
            if record is None:
                self.report.untuned.append(gvar.name_hint)
                continue
            sch = s_tir.Schedule(workload)
            record.trace.apply_to_schedule(sch, remove_postproc=False)
            secs = [float(s) for s in record.run_secs]
            self.report.applied[gvar.name_hint] = sum(secs) / len(secs) * 1e3
            scheduled = sch.mod["main"].without_attr("global_symbol")
            updated[gvar] = scheduled.with_attr("tirx.is_scheduled", True)
        for gvar, func in updated.items():
            mod[gvar] = func
        return mod
