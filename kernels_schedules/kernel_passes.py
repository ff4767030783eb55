"""The passes over each scheduled kernel, default or tuned: what a compile runs after the schedules
(``pipeline.relax_pipeline``) and what the tuner's builder runs on each candidate (``edgetvm.pipeline.tune``), so
that a candidate is timed as a compile builds it. A module of its own so that builder workers, started per batch
of candidates, import these passes and not the whole compile pipeline."""

from __future__ import annotations

from edgetvm.kernels_schedules.reassociate_run_time_scales import ReassociateRunTimeScales
from edgetvm.kernels_schedules.round_in_conversion import RoundInConversion
from edgetvm.kernels_schedules.share_parallel_launches import ShareParallelLaunches


def kernel_passes() -> list:
    """``ReassociateRunTimeScales``, ``RoundInConversion``, ``ShareParallelLaunches``, in that order."""
    return [ReassociateRunTimeScales(), RoundInConversion(), ShareParallelLaunches()]
