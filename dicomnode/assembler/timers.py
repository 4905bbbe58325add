"""The function APScheduler persists for each series timer.

A persisted job must name an importable function, and the node keeps no global state, so the
timer itself only hands back its series id; :class:`~dicomnode.assembler.Assembler` listens for
executed timers and does the work with its own database handle.
"""

from __future__ import annotations

from datetime import datetime

#: Timer job ids are ``series:<series row id>:<due time>``. Each arming gets a new id: a timer
#: re-armed from the listener of the one that just fired must not share its id, or the
#: scheduler's clean-up of the fired job would remove the new one.
TIMER_PREFIX = "series:"


def timer_id(series_id: int, due: datetime) -> str:
    return f"{TIMER_PREFIX}{series_id}:{due.timestamp():.6f}"


def series_of(job_id: str) -> int | None:
    """The series row id a timer job id refers to, None for other jobs."""
    if not job_id.startswith(TIMER_PREFIX):
        return None
    return int(job_id[len(TIMER_PREFIX):].split(":", 1)[0])


def series_quiet(series_id: int) -> int:
    """Fired ``assembly.series_timeout`` seconds after a series started receiving."""
    return series_id
