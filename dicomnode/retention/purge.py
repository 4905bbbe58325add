"""Delete what finished jobs no longer need: their series' spool files and their results.

``retention.keep_done_hours`` after a job finished, its spool files and results go; when free
space falls under ``storage.min_free × retention.emergency_factor``, the oldest finished jobs
go first regardless of age, one at a time. A series that still has an unfinished job is never
touched, and a job is purged once (``stage_times['purged']``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import RetentionConfig
from dicomnode.logs import log_event
from dicomnode.storage import ResultsStore, Spool
from dicomnode.store import FINISHED_STATES, Instance, Job, as_utc, utcnow

LOGGER = logging.getLogger("dicomnode.jobs")


class Retention:
    def __init__(self, retention: RetentionConfig, min_free: int,
                 sessions: sessionmaker[Session], spool: Spool, results: ResultsStore):
        self.retention = retention
        self.min_free = min_free
        self.sessions = sessions
        self.spool = spool
        self.results = results

    def purge(self, *, free_bytes: int | None = None, now: datetime | None = None) -> list[int]:
        """Purge what is due; returns the ids of the jobs purged. ``free_bytes``: free space
        now (None: do not consider it)."""
        retention = self.retention
        now = now or utcnow()
        emergency = (free_bytes is not None and
                     free_bytes < self.min_free * retention.emergency_factor)
        if not emergency and retention.keep_done_hours == 0:
            return []
        cutoff = now - timedelta(hours=retention.keep_done_hours)
        purged: list[int] = []
        with self.sessions.begin() as session:
            busy = set(session.scalars(select(Job.series_id).where(
                Job.state.not_in(FINISHED_STATES))).all())
            query = select(Job).where(Job.state.in_(FINISHED_STATES)).order_by(Job.updated_at)
            for job in session.scalars(query).all():
                if job.series_id in busy or "purged" in (job.stage_times or {}):
                    continue
                if not emergency and as_utc(job.updated_at) > cutoff:
                    continue
                self.results.remove(job.id)
                for instance in session.scalars(select(Instance).where(
                        Instance.series_id == job.series_id)).all():
                    (self.spool.root / instance.path).unlink(missing_ok=True)
                    session.delete(instance)
                job.stage_times = {**(job.stage_times or {}), "purged": utcnow().isoformat()}
                purged.append(job.id)
                if emergency:
                    break  # one at a time: the caller re-measures free space
        for job_id in purged:
            log_event(LOGGER, "job.purged", job=job_id, emergency=emergency)
        return purged
