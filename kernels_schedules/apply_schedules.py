"""Pass: apply the default CPU schedules (``cpu_rules``) to every PrimFunc, and record what each one got."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import tvm
from tvm import tirx
from tvm.target import Target

from edgetvm.kernels_schedules.cpu_rules import schedule_function

log = logging.getLogger(__name__)

NAIVE = "naive"  # TVM's unscheduled loop nest: one thread, no vectors


@dataclass
class ScheduleReport:
    """Which rule scheduled each fused function; ``naive`` ones fell back to TVM's untouched loops."""

    functions: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rule in self.functions.values():
            counts[rule] = counts.get(rule, 0) + 1
        return dict(sorted(counts.items()))

    def naive(self) -> list[str]:
        return sorted(name for name, rule in self.functions.items() if rule == NAIVE)

    def to_json(self) -> dict:
        return {
            "rules": self.counts(),
            "naive": self.naive(),
            "functions": dict(sorted(self.functions.items())),
            "errors": dict(sorted(self.errors.items())),  # why each naive function kept TVM's loops
        }


def is_scheduled(func: tirx.PrimFunc) -> bool:
    return "tirx.is_scheduled" in func.attrs and bool(func.attrs["tirx.is_scheduled"])


@tvm.transform.module_pass(opt_level=0, name="ApplyCPUSchedules")
class ApplyCPUSchedules:
    """Schedule every not-yet-scheduled PrimFunc with the first ``cpu_rules`` rule that applies.

    A rule that raises (an op shape it does not expect) leaves that function naive rather than failing the
    build; the report says which.
    """

    def __init__(self, target: Target, report: ScheduleReport | None = None):
        self.target = target
        self.report = report if report is not None else ScheduleReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updated = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            name = gvar.name_hint
            if is_scheduled(func):  # scheduled before this pass (a tuning database, a hand-written kernel)
                self.report.functions.setdefault(name, "prescheduled")
                continue
            try:
                sch, rule = schedule_function(func, self.target)
            except Exception as err:  # a ScheduleError or TVMError from a primitive: keep the naive loops
                log.debug("no default schedule for %s: %s", name, err)
                self.report.errors[name] = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
                self.report.functions[name] = NAIVE
                continue
            self.report.functions[name] = rule
            updated[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        for gvar, func in updated.items():
            mod[gvar] = func
        return mod
