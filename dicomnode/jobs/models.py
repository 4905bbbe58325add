"""Job states and the delivery table.

A job (``dicomnode.store.models.Job``) is one pipeline run on one complete series revision::

    complete → routed → loading → segmenting → encoding → dispatching → done
       ├→ ignored (no rule matches, or not an image series)
    complete | routed → superseded (a late instance reopened the series before a worker took
                                    the job; see the assembler)
    loading | segmenting | encoding → failed (typed reason; retry re-runs the job)
    loading | segmenting | encoding → routed at a restart (re-run), or superseded when the
                                       series has a newer revision by then
    dispatching → dead (a delivery used up its attempts; retry re-sends the same results)
    any unfinished state → cancelled (by a person)

One :class:`Delivery` row per (job, destination) carries its own attempts and back-off, so one
destination being down never holds back another.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from dicomnode.store.models import Base


class JobState(StrEnum):
    COMPLETE = "complete"        # the assembler's hand-over: series complete, not yet routed
    IGNORED = "ignored"          # no rule matches (or a non-image series)
    ROUTED = "routed"            # waiting in the queue for a worker
    LOADING = "loading"
    SEGMENTING = "segmenting"
    ENCODING = "encoding"
    DISPATCHING = "dispatching"  # results on disk, deliveries pending
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"                # a delivery exhausted its attempts
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"    # a late instance reopened the series before a worker took it


#: States in which no worker has taken the job yet (a late instance supersedes them).
WAITING_STATES = (JobState.COMPLETE, JobState.ROUTED)
#: States a worker owns; after a crash they are re-queued as ``routed``.
RUNNING_STATES = (JobState.LOADING, JobState.SEGMENTING, JobState.ENCODING)
#: States from which ``jobs cancel`` stops a job.
CANCELLABLE_STATES = (JobState.COMPLETE, JobState.ROUTED, *RUNNING_STATES, JobState.DISPATCHING,
                      JobState.FAILED, JobState.DEAD)
#: States from which ``jobs retry`` re-queues a job.
RETRYABLE_STATES = (JobState.FAILED, JobState.DEAD, JobState.CANCELLED)
FINISHED_STATES = (JobState.DONE, JobState.IGNORED, JobState.CANCELLED, JobState.SUPERSEDED)


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class Delivery(Base):
    """The results of one job on their way to one destination."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("job_id", "destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    #: SOP Instance UIDs the destination acknowledged on the last successful attempt.
    stored: Mapped[list[str]] = mapped_column(JSON, default=list)


class DestinationHealth(Base):
    """Last C-ECHO of each DICOM destination, shown in ``dicomnode status``."""

    __tablename__ = "destination_health"

    destination: Mapped[str] = mapped_column(String(64), primary_key=True)
    reachable: Mapped[bool] = mapped_column(default=False)
    detail: Mapped[str] = mapped_column(String(128), default="")
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
