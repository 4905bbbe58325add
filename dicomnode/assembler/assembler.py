"""Series assembly: a series is complete after ``assembly.series_timeout`` seconds of silence.

DICOM has no "end of series" message, so completeness is a quiet period (as in mercure and
Orthanc). Each receiving series has an APScheduler date job (``series:<id>:<due>``) kept in the
``apscheduler_jobs`` table of the index database, so timers survive a restart and fire late
rather than never. The timer is armed once, when the series starts (or restarts) receiving;
when it fires it compares the series' ``last_received_at`` with the clock and either re-arms
for the remaining time or completes the series. That keeps the receive path to one scheduler
write per series, not one per instance.

Completion of an image series creates a :class:`~dicomnode.store.Job` in state ``complete``.
Non-image series (SR, PR, KO: no Pixel Data) are completed but never get a job.

Late instances: a new instance in a ``complete`` series reopens it (state ``receiving``,
revision + 1, new timer); when it completes again a new job is created for the new revision
and earlier jobs of the series that no worker has taken yet (``complete`` or ``routed``) become
``superseded``: running them would segment a partial series. Jobs a worker already owns run
to the end; the new revision's results carry the same derived UIDs, so they replace them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.assembler.timers import series_of, series_quiet, timer_id
from dicomnode.logs import log_event
from dicomnode.store import IndexOutcome, Series, utcnow
from dicomnode.store.jobs import WAITING_STATES, Job, JobState
from dicomnode.store.models import SeriesState, as_utc

LOGGER = logging.getLogger("dicomnode.assembler")

#: Name of the persistent APScheduler job store (table ``apscheduler_jobs``).
PERSISTENT_STORE = "index"
#: Seconds between sweeps that arm a timer for any receiving series that lacks one.
SWEEP_INTERVAL = 60.0


class Assembler:
    """Owns the series timers and turns quiet series into jobs."""

    def __init__(self, write_engine: Engine, scheduler_engine: Engine, series_timeout: float,
                 on_job: Callable[[], None] | None = None):
        self.sessions = sessionmaker(write_engine, expire_on_commit=False)
        self.series_timeout = series_timeout
        #: Called after a job was created (the executor's wake-up).
        self.on_job = on_job
        self.scheduler = BackgroundScheduler(
            jobstores={PERSISTENT_STORE: SQLAlchemyJobStore(engine=scheduler_engine),
                       "default": MemoryJobStore()},
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
            timezone=UTC,
        )
        self.scheduler.add_listener(self._on_timer, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)

    def start(self) -> None:
        """Start the scheduler (if not started paused already): persisted timers are loaded
        and overdue ones fire at once."""
        if self.scheduler.running:
            self.scheduler.resume()
        else:
            self.scheduler.start()
        armed = self.sweep()
        self.scheduler.add_job(self.sweep, "interval", seconds=SWEEP_INTERVAL,
                               id="assembler-sweep", replace_existing=True)
        log_event(LOGGER, "assembler.started", series_timeout=self.series_timeout,
                  timers=len(self._timed_series()), rearmed=armed)

    def stop(self) -> None:
        """Stop firing timers; pending ones stay in the database for the next start."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)

    def series_started(self, outcome: IndexOutcome) -> None:
        """The receiver saw a new or reopened series: arm its completion timer."""
        self.arm(outcome.series_id, utcnow() + timedelta(seconds=self.series_timeout))

    def arm(self, series_id: int, when: datetime) -> None:
        self.scheduler.add_job(series_quiet, "date", run_date=when, args=[series_id],
                               id=timer_id(series_id, when), jobstore=PERSISTENT_STORE,
                               replace_existing=True)

    def _timed_series(self) -> set[int]:
        """Series row ids that have a pending timer."""
        ids = (series_of(job.id) for job in self.scheduler.get_jobs(jobstore=PERSISTENT_STORE))
        return {i for i in ids if i is not None}

    def sweep(self) -> int:
        """Arm a timer for every receiving series without one (a crash between indexing and
        arming, or a lost timer); return how many were armed."""
        armed = 0
        existing = self._timed_series()
        with self.sessions() as session:
            rows = session.execute(select(Series.id, Series.last_received_at)
                                   .where(Series.state == SeriesState.RECEIVING)).all()
        for series_id, last in rows:
            if series_id not in existing:
                self.arm(series_id, as_utc(last) + timedelta(seconds=self.series_timeout))
                armed += 1
        return armed

    def _on_timer(self, event: JobExecutionEvent) -> None:
        if series_of(str(event.job_id)) is None or event.exception is not None:
            return
        try:
            self.complete_if_quiet(int(event.retval))
        except Exception:  # noqa: BLE001 - the sweep re-arms; never kill the scheduler thread
            LOGGER.exception("series completion failed")

    def complete_if_quiet(self, series_id: int) -> Job | None:
        """Complete the series if it has been quiet long enough, else re-arm its timer.

        Returns the job created (None for non-image series, re-armed or already complete).
        """
        with self.sessions() as session, session.begin():
            series = session.get(Series, series_id)
            if series is None or series.state != SeriesState.RECEIVING:
                return None
            due = as_utc(series.last_received_at) + timedelta(seconds=self.series_timeout)
            now = utcnow()
            if now < due:
                rearm_at: datetime | None = due
            else:
                rearm_at = None
                job = self._complete(session, series, now)
        if rearm_at is not None:
            self.arm(series_id, rearm_at)
            return None
        log_event(LOGGER, "series.complete", series_instance_uid=series.series_instance_uid,
                  modality=series.modality, instances=series.instance_count,
                  revision=series.revision, job=job.id if job else None)
        if job is not None and self.on_job is not None:
            self.on_job()
        return job

    @staticmethod
    def _complete(session: Session, series: Series, now: datetime) -> Job | None:
        series.state = SeriesState.COMPLETE
        series.completed_at = now
        if not series.is_image:
            return None
        superseded = 0
        for waiting in session.scalars(select(Job).where(Job.series_id == series.id,
                                                         Job.state.in_(WAITING_STATES))):
            waiting.transition(JobState.SUPERSEDED, error_kind="superseded",
                               error_message=f"revision {series.revision} of the series "
                                             "replaced this one before a worker took it")
            superseded += 1
        job = Job.for_series(series)
        session.add(job)
        session.flush()
        if superseded:
            log_event(LOGGER, "job.superseded", series_instance_uid=series.series_instance_uid,
                      jobs=superseded, revision=series.revision)
        return job
