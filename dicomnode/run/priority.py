"""Job threads at a lower CPU priority than receiving (``jobs.nice``).

A job computes on every core it gets (torch's intra-op threads); senders wait on receiving,
one C-STORE at a time. On a machine that does both, the job threads run at a higher
niceness so that the scheduler gives the receiver processes the CPU first, and the job what
is left: a transfer is not slowed by a job, a job only by a transfer.
"""

from __future__ import annotations

import logging
import os
import threading

from dicomnode.logs import log_event

LOGGER = logging.getLogger("dicomnode.jobs")


def lower_thread_priority(nice: int) -> int | None:
    """Raise the calling thread's niceness to at least ``nice`` (never lower it: that needs
    privileges) and return the niceness it then has; None where threads have no niceness of
    their own (not Linux) or the call is refused.

    On Linux a thread is a task: ``setpriority(PRIO_PROCESS, <thread id>)`` changes that
    thread alone, and threads it starts later (torch's OpenMP pool) inherit the value.
    """
    if nice <= 0 or not hasattr(os, "setpriority") or not os.path.isdir("/proc/self/task"):
        return None
    thread = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        if current < nice:
            os.setpriority(os.PRIO_PROCESS, thread, nice)
        return os.getpriority(os.PRIO_PROCESS, thread)
    except OSError as exc:
        log_event(LOGGER, "jobs.nice_failed", logging.WARNING, nice=nice, error=str(exc))
        return None
