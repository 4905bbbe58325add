"""serve's side of ``jobs.backend: celery``: hand each routed job's id to the broker.

A job is marked published just before its message goes out (so a worker that claims it at once
finds the mark already there) and unmarked when the broker refuses or is down; the broker
confirms each message before ``send_task`` returns. A crash between mark and send would leave
a job marked but never sent, so at each start every job still waiting is published again
(:meth:`Publisher.republish_waiting`): a repeated id is dropped by the workers' claim. When the
broker is down, routed jobs wait unpublished and go out once it is back.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Config
from dicomnode.distributed.app import RUN_JOB, broker_priority, celery_app, queue_for
from dicomnode.logs import log_event
from dicomnode.store import Job, JobState, utcnow

if TYPE_CHECKING:
    from celery import Celery

LOGGER = logging.getLogger("dicomnode.distributed")

#: Jobs published per coordinator pass (the rest go at the next one).
BATCH = 200


class Publisher:
    def __init__(self, config: Config, sessions: sessionmaker[Session]):
        self.config = config
        self.sessions = sessions
        self._app: Celery | None = None
        self._broker_down = False

    @property
    def app(self) -> Celery:
        if self._app is None:  # celery imported on first use, not by `dicomnode status`
            self._app = celery_app(self.config)
        return self._app

    def publish(self) -> int:
        """Publish every routed job not published yet (highest priority first); returns how
        many went out."""
        with self.sessions() as session:
            pending = session.execute(
                select(Job.id, Job.pipeline, Job.priority)
                .where(Job.state == JobState.ROUTED, Job.published_at.is_(None))
                .order_by(Job.priority.desc(), Job.id).limit(BATCH)).all()
        sent = 0
        for job_id, pipeline, priority in pending:
            stamp = utcnow()
            with self.sessions.begin() as session:
                marked = cast(CursorResult[Any], session.execute(
                    update(Job).where(Job.id == job_id, Job.state == JobState.ROUTED,
                                      Job.published_at.is_(None))
                    .values(published_at=stamp))).rowcount
            if not marked:  # cancelled or superseded meanwhile
                continue
            try:
                self.app.send_task(RUN_JOB, args=[job_id], queue=queue_for(self.config, pipeline),
                                   priority=broker_priority(priority), task_id=f"job-{job_id}",
                                   retry=True, retry_policy={"max_retries": 1})
            except Exception as exc:  # noqa: BLE001 - the broker is down or refuses: try later
                with self.sessions.begin() as session:
                    session.execute(update(Job).where(Job.id == job_id,
                                                      Job.published_at == stamp)
                                    .values(published_at=None))
                if not self._broker_down:
                    log_event(LOGGER, "broker.unavailable", logging.WARNING, error=str(exc),
                              waiting=len(pending) - sent)
                self._broker_down = True
                return sent
            if self._broker_down:
                log_event(LOGGER, "broker.available")
                self._broker_down = False
            log_event(LOGGER, "job.published", job=job_id, pipeline=pipeline,
                      queue=queue_for(self.config, pipeline))
            sent += 1
        return sent

    def republish_waiting(self) -> int:
        """At start: every job still waiting for a worker goes to the broker again (its first
        message may never have left). Returns how many."""
        with self.sessions.begin() as session:
            return cast(CursorResult[Any], session.execute(
                update(Job).where(Job.state == JobState.ROUTED, Job.published_at.is_not(None))
                .values(published_at=None))).rowcount

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
