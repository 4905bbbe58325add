"""What people, restarts and lost workers do to jobs: recover after a crash or a lost worker,
retry, cancel."""

from __future__ import annotations

import logging

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.dispatcher import Dispatcher
from dicomnode.logs import log_event
from dicomnode.storage import ResultsStore
from dicomnode.store import (
    CANCELLABLE_STATES,
    RETRYABLE_STATES,
    RUNNING_STATES,
    Job,
    JobError,
    JobState,
    utcnow,
)

LOGGER = logging.getLogger("dicomnode.jobs")


class JobControl:
    def __init__(self, sessions: sessionmaker[Session], results: ResultsStore,
                 dispatcher: Dispatcher):
        self.sessions = sessions
        self.results = results
        self.dispatcher = dispatcher

    def recover(self) -> int:
        """After a restart: jobs a worker held are queued again (their work is redone; the
        results carry the same UIDs, so a re-send replaces rather than duplicates). One whose
        series has since grown (a late instance opened a newer revision, which gets its own
        job) is superseded instead: it would segment a partial series. Returns the count
        queued again."""
        requeued = self._requeue(Job.state.in_(RUNNING_STATES), "restart")
        self.results.remove_partials()
        return requeued

    def recover_lost(self) -> int:
        """With remote workers (``jobs.backend: celery``): queue again only the jobs whose
        worker's lease ran out (the worker was killed or cut off); a live worker keeps its job
        whatever serve does, and its half-written results are its own. A running job without
        a lease was left by the local executor. Returns the count queued again."""
        return self._requeue(Job.state.in_(RUNNING_STATES) & (
            Job.lease_until.is_(None) | (Job.lease_until < utcnow())), "worker-lost")

    def _requeue(self, which: ColumnElement[bool], reason: str) -> int:
        requeued, superseded = [], []
        with self.sessions.begin() as session:
            for job in session.scalars(select(Job).where(which)).all():
                if job.revision < job.series.revision:
                    job.transition(JobState.SUPERSEDED, error_kind="superseded",
                                   error_message="the series has a newer revision")
                    superseded.append(job.id)
                else:
                    job.transition(JobState.ROUTED)
                    requeued.append(job.id)
        for job_id in requeued:
            log_event(LOGGER, "job.requeued", job=job_id, reason=reason)
        for job_id in superseded:
            log_event(LOGGER, "job.superseded", job=job_id, reason="series has a newer revision")
        return len(requeued)

    def retry(self, job_id: int) -> JobState:
        """Re-queue a failed, dead or cancelled job: re-deliver if its results exist, else
        re-run. Returns the state it is in now."""
        with self.sessions.begin() as session:
            job = self._get(session, job_id)
            if job.state not in RETRYABLE_STATES:
                raise JobError("not-retryable", f"job {job_id} is {job.state}; only "
                               f"{', '.join(RETRYABLE_STATES)} jobs can be retried")
            if not self.dispatcher.requeue_undelivered(session, job):
                job.transition(JobState.ROUTED if job.pipeline else JobState.COMPLETE)
            return job.state

    def requeue_dead_letters(self, destination: str) -> list[int]:
        """Send again every delivery to ``destination`` that gave up (once it is back); returns
        the ids of the jobs dispatching again."""
        with self.sessions.begin() as session:
            requeued = self.dispatcher.requeue_dead(session, destination)
        for job_id in requeued:
            log_event(LOGGER, "job.requeued", job=job_id, reason="dead letter requeued",
                      destination=destination)
        return requeued

    def cancel(self, job_id: int) -> None:
        with self.sessions.begin() as session:
            job = self._get(session, job_id)
            if job.state not in CANCELLABLE_STATES:
                raise JobError("not-cancellable", f"job {job_id} is already {job.state}")
            job.transition(JobState.CANCELLED, error_kind="cancelled",
                           error_message="cancelled by a person")

    @staticmethod
    def _get(session: Session, job_id: int) -> Job:
        job = session.get(Job, job_id)
        if job is None:
            raise JobError("unknown-job", f"there is no job {job_id}")
        return job
