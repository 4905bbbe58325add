"""The run stage: claim a queued job and run its case — the one job runner of the local
executor (which picks the next job, :meth:`Worker.claim_next`) and of ``dicomnode worker``
(which is handed a job id by the broker, :meth:`Worker.claim`).

A worker claims a job with a conditional UPDATE (two workers never run the same job), runs the
case into a staged results folder (:class:`~dicomnode.storage.ResultsStore`), commits the folder
atomically and hands the job to dispatch. A failure is recorded with a typed reason and never
stops the worker; a person's cancel is honoured between steps. A remote worker's claim is a
lease that its heartbeat renews; a worker that finds its claim gone (lost and given to another)
stops writing to the job.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.logs import log_event
from dicomnode.run.case import Case, CaseStep, CaseSummary, OnStep
from dicomnode.storage import ResultsStore, Spool
from dicomnode.store import (
    RUNNING_STATES,
    Instance,
    Job,
    JobError,
    JobState,
    Series,
    SeriesState,
    as_utc,
    error_kind,
    utcnow,
)

LOGGER = logging.getLogger("dicomnode.jobs")


class CaseRunnerLike(Protocol):
    """What the worker needs of :class:`~dicomnode.run.case.CaseRunner` (tests substitute a
    lighter one to exercise queueing without nnU-Net)."""

    def run_pipeline(self, pipeline: str, case: Case, out: Path,
                     on_step: OnStep) -> CaseSummary: ...


class ResultsHandOver(Protocol):
    """The dispatch stage's side of a finished run (:class:`dicomnode.dispatcher.Dispatcher`)."""

    def queue(self, session: Session, job: Job) -> None: ...


class Worker:
    def __init__(self, sessions: sessionmaker[Session], spool: Spool, results: ResultsStore,
                 runner: CaseRunnerLike, dispatch: ResultsHandOver):
        self.sessions = sessions
        self.spool = spool
        self.results = results
        self.runner = runner
        self.dispatch = dispatch

    def claim_next(self) -> int | None:
        """Take the next queued job (highest priority, then oldest) for this worker."""
        with self.sessions.begin() as session:
            candidates = session.scalars(
                select(Job.id).where(Job.state == JobState.ROUTED)
                .order_by(Job.priority.desc(), Job.id).limit(8)).all()
            for job_id in candidates:
                # Session.execute is typed as returning Result; an UPDATE gives a CursorResult.
                claimed = cast(CursorResult[Any], session.execute(
                    update(Job).where(Job.id == job_id, Job.state == JobState.ROUTED)
                    .values(state=JobState.LOADING))).rowcount
                if claimed:
                    job = session.get(Job, job_id)
                    assert job is not None
                    job.transition(JobState.LOADING)
                    job.attempts = (job.attempts or 0) + 1
                    return job_id
        return None

    def claim(self, job_id: int, owner: str, lease_seconds: float) -> bool:
        """Claim the job ``job_id`` for ``owner`` until ``lease_seconds`` from now, if it is
        queued or its last worker's lease ran out. False for a job another worker holds or
        that is finished: the broker delivered its id again, and that delivery is dropped."""
        now = utcnow()
        with self.sessions.begin() as session:
            claimed = cast(CursorResult[Any], session.execute(
                update(Job).where(Job.id == job_id, (Job.state == JobState.ROUTED) | (
                    Job.state.in_(RUNNING_STATES) & (Job.lease_until < now)))
                .values(state=JobState.LOADING, claimed_by=owner,
                        lease_until=now + timedelta(seconds=lease_seconds)))).rowcount
            if not claimed:
                return False
            job = session.get(Job, job_id)
            assert job is not None
            job.transition(JobState.LOADING)
            job.attempts = (job.attempts or 0) + 1
            return True

    def _set_state(self, job_id: int, state: JobState, owner: str | None = None,
                   **error: str) -> bool:
        """Move a job on unless a person cancelled it meanwhile or (``owner`` given) another
        worker holds it now (then False)."""
        with self.sessions.begin() as session:
            job = session.get(Job, job_id)
            if job is None or job.state == JobState.CANCELLED or not _holds(job, owner):
                return False
            job.transition(state, **error)
            return True

    def prefetch_quiet(self, quiet_seconds: float) -> bool:
        """Load ahead the volume of the image series that has been quiet longest, at least
        ``quiet_seconds``, but is not complete yet, if the runner can (its job then starts
        segmenting at once). Only a speedup: the job checks that the files are still exactly
        those loaded (a late instance means a fresh load) and loads them itself otherwise."""
        prefetch = getattr(self.runner, "prefetch", None)
        if prefetch is None:
            return False
        before = utcnow() - timedelta(seconds=quiet_seconds)
        with self.sessions() as session:
            receiving = session.scalars(
                select(Series).where(Series.state == SeriesState.RECEIVING, Series.is_image)
                .order_by(Series.last_received_at).limit(8))
            quiet = [s for s in receiving if as_utc(s.last_received_at) <= before]
            if not quiet:
                return False
            case = self._case(session, quiet[0], f"series-{quiet[0].id}")
        return bool(prefetch(case))

    def _case(self, session: Session, series: Series, name: str) -> Case:
        """The case of ``series``: its spool files in the order they were indexed (a job's
        case and the one loaded ahead must list them alike), under the index's UIDs."""
        rows = session.scalars(select(Instance.path).where(Instance.series_id == series.id)
                               .order_by(Instance.id)).all()
        return Case(name, "dicom", tuple(self.spool.root / p for p in rows),
                    series.study.study_instance_uid, series.series_instance_uid)

    def case_of(self, job_id: int) -> tuple[str, Case]:
        """The job's pipeline and its case: the series' spool files under the UIDs the index
        lists it by."""
        with self.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None and job.pipeline
            return job.pipeline, self._case(session, job.series, f"{job_id:08d}")

    def run_job(self, job_id: int, owner: str | None = None) -> None:
        """Load, segment and encode a claimed job; on success it goes to dispatch. ``owner``:
        the claim's holder (remote workers), checked at every step."""
        pipeline, case = self.case_of(job_id)
        staged = self.results.stage(job_id)
        started = time.perf_counter()

        def on_step(step: CaseStep) -> None:
            if not self._set_state(job_id, JobState(step.value), owner):
                raise JobError("cancelled", "cancelled by a person, or claimed by another "
                               "worker")

        try:
            summary = self.runner.run_pipeline(pipeline, case, staged, on_step)
        except Exception as exc:  # a bad series must never stop the worker; the reason is kept
            self.results.discard(job_id)
            kind = error_kind(exc)
            if kind != "cancelled":
                message = str(exc) if isinstance(exc, JobError) else f"{type(exc).__name__}: {exc}"
                self._set_state(job_id, JobState.FAILED, owner, error_kind=kind,
                                error_message=message)
            log_event(LOGGER, "job.failed", job=job_id, kind=kind, reason=str(exc))
            return
        self.results.commit(job_id)  # results appear whole or not at all
        with self.sessions.begin() as session:
            job = session.get(Job, job_id)
            assert job is not None
            if job.state == JobState.CANCELLED or not _holds(job, owner):
                return
            job.lease_until = None  # out of the workers' hands
            self.dispatch.queue(session, job)
        log_event(LOGGER, "job.processed", job=job_id, pipeline=pipeline,
                  seconds=round(time.perf_counter() - started, 3),
                  structures=len(summary.structures))


def _holds(job: Job, owner: str | None) -> bool:
    """Whether ``owner`` still holds the job (always, for the local executor's None)."""
    return owner is None or (job.claimed_by == owner and job.state in RUNNING_STATES)
