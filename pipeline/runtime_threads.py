"""The TVM runtime's CPU thread count on this host, set so that it really applies.

TVM 0.27's thread pool is per calling thread (``thread_local``) and is created on the first parallel launch
in that thread, with ``MaxConcurrency()`` workers: ``TVM_NUM_THREADS``, else ``OMP_NUM_THREADS``, else *half* of
``std::thread::hardware_concurrency()`` on x86 (it assumes hyper-threading), which is 1 on a 2-core machine.
``runtime.config_threadpool(mode, n)`` can lower the count of an existing pool but never raise it above the
workers it was created with. So ``call_with_tvm_threads`` sets ``TVM_NUM_THREADS``, runs the TVM code in a new
thread (whose pool does not exist yet), and reads the count back from ``runtime.NumThreads``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# ThreadGroup::AffinityMode kBig: what the pool uses when it is created (workers on the fastest cores).
_AFFINITY_BIG = 1


def configure_tvm_threads(threads: int) -> int:
    """Ask for ``threads`` TVM workers in the calling thread; returns the count its pool really has.

    Only lowers the count of a pool created with more workers; see ``call_with_tvm_threads``.
    """
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(_AFFINITY_BIG, threads)
    return tvm_thread_count()


def set_process_threads(threads: int) -> None:
    """Make every TVM thread pool this process creates from now on have ``threads`` workers (a worker process's
    initializer: MetaSchedule's ``LocalRunner`` times candidates in one)."""
    os.environ["TVM_NUM_THREADS"] = str(threads)


def tvm_thread_count() -> int:
    """The worker count of the calling thread's TVM pool (created now if it does not exist)."""
    import tvm

    return int(tvm.get_global_func("runtime.NumThreads")())


def call_with_tvm_threads(func: Callable[[], T], threads: int, name: str = "edgetvm-worker") -> tuple[T, int]:
    """Run ``func`` where TVM code runs on ``threads`` threads; returns its result and the pool's thread count.

    ``TVM_NUM_THREADS`` is set while ``func`` runs (TVM reads it on every parallel launch too) and restored after.
    """

    def run() -> tuple[T, int]:
        effective = configure_tvm_threads(threads)
        return func(), effective

    previous = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(threads)
    try:
        return call_in_new_thread(run, name)
    finally:
        if previous is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = previous


def call_in_new_thread(func: Callable[[], T], name: str = "edgetvm-worker") -> T:
    """Run ``func`` in a new thread (so a new TVM thread pool) and return its result or raise its exception."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = func()
        except BaseException as err:  # re-raised in the caller's thread below
            outcome["error"] = err

    worker = threading.Thread(target=target, name=name, daemon=True)
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
