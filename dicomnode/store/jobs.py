"""The job record: one pipeline run on one complete series revision, and its deliveries.

The one owner of job and delivery states (the assembler creates jobs, the stages move them,
the CLI and ``status`` read them)::

    complete → routed → loading → segmenting → encoding → dispatching → done
       ├→ ignored (no rule matches, not an image, not a volume)
    complete | routed → superseded (a late instance reopened the series before a worker took
                                    the job; see the assembler)
    loading | segmenting | encoding → failed (typed reason; retry re-runs the job)
    loading | segmenting | encoding → routed at a restart (re-run), or superseded when the
                                       series has a newer revision by then
    loading | segmenting | encoding → routed when a remote worker's lease runs out (it was
                                       lost; ``jobs.backend: celery``)
    dispatching → dead (a delivery used up its attempts; retry re-sends the same results)
    any unfinished state → cancelled (by a person)

One :class:`Delivery` row per (job, destination) carries its own attempts and back-off, so one
destination being down never holds back another.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dicomnode.store.models import Base, as_utc, state_column, utcnow

if TYPE_CHECKING:
    from dicomnode.store.models import Series


class JobState(StrEnum):
    COMPLETE = "complete"        # the assembler's hand-over: series complete, not yet routed
    IGNORED = "ignored"          # no rule matches (or not an image / not a volume)
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


class JobError(Exception):
    """A stage failed for a reason worth a word in ``status`` (``kind``) and a sentence."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


def error_kind(exc: BaseException) -> str:
    """The short kind of an exception for the job record: a :class:`JobError`'s own, else the
    class name (``SliceMissingError`` → ``slice-missing``)."""
    if isinstance(exc, JobError):
        return exc.kind
    name = type(exc).__name__.removesuffix("Error")
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower() or "error"


class Job(Base):
    """One unit of work: a complete series at a given revision, run through one pipeline.

    Created in state ``complete`` by the assembler; every stage moves it on with
    :meth:`transition`, which keeps ``stage_times`` (state → time it was last entered, ISO 8601
    UTC). A failure sets ``error_kind`` (a short machine-readable word) and ``error_message``.
    """

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    state: Mapped[JobState] = mapped_column(state_column(JobState), index=True)
    instance_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stage_times: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Set by routing: the pipeline this job runs, the rule that chose it, its queue priority
    #: (higher first) and the destination names its results go to.
    pipeline: Mapped[str | None] = mapped_column(String(64))
    rule: Mapped[str | None] = mapped_column(String(128))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    destinations: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: The calling AE title that sent the series (``dispatch.return_to_sender``).
    sender: Mapped[str | None] = mapped_column(String(16))
    error_kind: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    #: With ``jobs.backend: celery``: when serve handed the job id to the broker (NULL: not
    #: yet, so it is published), the worker that claimed it, and until when its claim holds
    #: without a heartbeat. A claim whose lease ran out is the job of a lost worker.
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    series: Mapped[Series] = relationship(back_populates="jobs")

    @classmethod
    def for_series(cls, series: Series) -> Job:
        """A new job in state ``complete`` for the series' current revision."""
        now = utcnow()
        job = cls(series_id=series.id, revision=series.revision,
                  instance_count=series.instance_count, created_at=now, updated_at=now,
                  stage_times={}, attempts=0, priority=0, destinations=[])
        job.transition(JobState.COMPLETE)
        return job

    def transition(self, state: JobState, *, error_kind: str | None = None,
                   error_message: str | None = None) -> None:
        """Move to ``state``, stamping the time; errors are cleared unless given."""
        now = utcnow()
        self.state = state
        self.updated_at = now
        self.stage_times = {**(self.stage_times or {}), state.value: now.isoformat()}
        self.error_kind = error_kind
        self.error_message = error_message
        if state == JobState.ROUTED:  # queued again: to be published and claimed afresh
            self.published_at = self.lease_until = None


class Delivery(Base):
    """The results of one job on their way to one destination."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("job_id", "destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    #: A name under ``destinations``, ``sender:<AE>`` for a return to the sender, or
    #: ``forward:<name>`` for the source series forwarded by its rule.
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[DeliveryState] = mapped_column(state_column(DeliveryState, 16),
                                                 default=DeliveryState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    #: SOP Instance UIDs the destination acknowledged on the last successful attempt.
    stored: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: The de-identification profile applied on the way (NULL: sent as held).
    profile: Mapped[str | None] = mapped_column(String(64))
    #: Objects not sent, each ``{"sop": uid, "reason": why}`` (burned-in annotation at a
    #: de-identifying destination); NULL or empty: nothing withheld.
    withheld: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)


class DestinationHealth(Base):
    """Last C-ECHO of each DICOM destination, shown in ``dicomnode status``."""

    __tablename__ = "destination_health"

    destination: Mapped[str] = mapped_column(String(64), primary_key=True)
    reachable: Mapped[bool] = mapped_column(default=False)
    detail: Mapped[str] = mapped_column(String(128), default="")
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WorkerRecord(Base):
    """A ``dicomnode worker`` process and its last heartbeat (``jobs.backend: celery``).

    Written by the worker itself every third of ``jobs.lease_seconds``; one whose heartbeat is
    older than the lease is reported lost by ``status``.
    """

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    #: The broker queues it takes jobs from (``gpu,cpu``) and the device it runs models on.
    queues: Mapped[str] = mapped_column(String(64))
    device: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: The job it runs now (NULL: idle).
    job_id: Mapped[int | None] = mapped_column(Integer)
    #: ``running``, or ``stopped`` after a graceful stop.
    state: Mapped[str] = mapped_column(String(16), default="running")
    #: Its ``jobs.lease_seconds``: a running worker not heard from for longer is lost.
    lease_seconds: Mapped[float] = mapped_column(Float, default=60.0)

    def lost(self, now: datetime) -> bool:
        return self.state == "running" and (
            as_utc(self.heartbeat_at) + timedelta(seconds=self.lease_seconds) < now)
