"""serve's side of ``jobs.backend: celery``: hand each routed job's id to the broker, once.

A job is marked published only after the broker confirmed the message; a crash between the
two publishes it again at the next start, and the workers' claim drops the repeat. When the
broker is down, routed jobs simply wait unpublished and go out once it is back.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import select, update
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
            try:
                self.app.send_task(RUN_JOB, args=[job_id], queue=queue_for(self.config, pipeline),
                                   priority=broker_priority(priority), task_id=f"job-{job_id}",
                                   retry=True, retry_policy={"max_retries": 1})
            except Exception as exc:  # noqa: BLE001 - the broker is down or refuses: try later
                if not self._broker_down:
                    log_event(LOGGER, "broker.unavailable", logging.WARNING, error=str(exc),
                              waiting=len(pending) - sent)
                self._broker_down = True
                return sent
            if self._broker_down:
                log_event(LOGGER, "broker.available")
                self._broker_down = False
            with self.sessions.begin() as session:
                session.execute(update(Job).where(Job.id == job_id, Job.state == JobState.ROUTED,
                                                  Job.published_at.is_(None))
                                .values(published_at=utcnow()))
            log_event(LOGGER, "job.published", job=job_id, pipeline=pipeline,
                      queue=queue_for(self.config, pipeline))
            sent += 1
        return sent

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
