"""The job stages after assembly: route, run (load → segment → encode), dispatch, purge.

Each stage is a method that does one step for one job and records it in the job table, so the
executor (threads) and tests drive the same code. Everything a stage needs survives a restart:
the job row, the spool files, the results folder ``<storage.path>/jobs/<id>/`` (written to a
temporary folder and renamed, so it is either complete or absent) and the delivery rows with
their back-off times.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Protocol

import pydicom
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Config
from dicomnode.dispatcher import DeliveryError, deliver, echo
from dicomnode.jobs.models import (
    CANCELLABLE_STATES,
    FINISHED_STATES,
    RETRYABLE_STATES,
    RUNNING_STATES,
    Delivery,
    DeliveryState,
    DestinationHealth,
    JobState,
)
from dicomnode.logs import log_event
from dicomnode.receiver.spool import fsync_folder, fsync_path
from dicomnode.rules import SeriesFacts, route
from dicomnode.store.models import Association, Instance, Job, Series, utcnow

LOGGER = logging.getLogger("dicomnode.jobs")


class JobError(Exception):
    """A stage failed for a reason worth a word in ``status`` (``kind``) and a sentence."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class SeriesIdentity:
    """The Study and Series Instance UIDs the index holds for a series. They differ from the
    files' own only when the sender left them empty and the receiver derived them."""

    study_instance_uid: str
    series_instance_uid: str


class SeriesProcessor(Protocol):
    """Runs a pipeline on a series' spool files and writes its results into a folder.

    ``stage`` is called with ``segmenting`` and ``encoding`` as the run moves on; the return
    value is a summary for the job record (pipeline metadata, structures found).
    """

    def __call__(self, pipeline: str, paths: list[Path], out: Path,
                 stage: Callable[[str], None], identity: SeriesIdentity) -> dict[str, Any]: ...


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): doubling, capped."""
    return min(maximum, initial * 2 ** (attempt - 1))


class JobService:
    """Moves jobs through their states. Thread-safe: every method uses its own session and
    claims a job with a conditional UPDATE, so two workers never run the same job."""

    def __init__(self, config: Config, sessions: sessionmaker[Session], spool_root: Path,
                 processor: SeriesProcessor):
        self.config = config
        self.sessions = sessions
        self.spool_root = spool_root
        self.results_root = config.storage.path / "jobs"
        self.processor = processor

    # -- recovery -------------------------------------------------------------------------
    def recover(self) -> int:
        """After a restart: jobs a worker held are queued again (their work is redone; the
        results carry the same UIDs, so a re-send replaces rather than duplicates). One whose
        series has since grown (a late instance opened a newer revision, which gets its own
        job) is superseded instead: it would segment a partial series. Returns the count
        queued again."""
        requeued, superseded = [], []
        with self.sessions.begin() as session:
            for job in session.scalars(select(Job).where(Job.state.in_(RUNNING_STATES))).all():
                if job.revision < job.series.revision:
                    job.transition(JobState.SUPERSEDED)
                    superseded.append(job.id)
                else:
                    job.transition(JobState.ROUTED)
                    requeued.append(job.id)
            for leftover in self.results_root.glob("*.partial"):
                shutil.rmtree(leftover, ignore_errors=True)
        for job_id in requeued:
            log_event(LOGGER, "job.requeued", job=job_id, reason="restart")
        for job_id in superseded:
            log_event(LOGGER, "job.superseded", job=job_id, reason="series has a newer revision")
        return len(requeued)

    # -- routing --------------------------------------------------------------------------
    def route_pending(self) -> int:
        """Route every job the assembler handed over (state ``complete``)."""
        with self.sessions() as session:
            ids = session.scalars(select(Job.id).where(Job.state == JobState.COMPLETE)
                                  .order_by(Job.id)).all()
        for job_id in ids:
            self.route_job(job_id)
        return len(ids)

    def _facts(self, session: Session, job: Job) -> SeriesFacts:
        first = session.scalars(select(Instance).where(Instance.series_id == job.series_id)
                                .order_by(Instance.id).limit(1)).first()
        if first is None:
            raise JobError("no-instances", "the series has no instances in the index")
        header = pydicom.dcmread(self.spool_root / first.path, stop_before_pixels=True)
        frames = session.scalar(select(func.count()).select_from(Instance)
                                .where(Instance.series_id == job.series_id)) or 0
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            frames = int(header.NumberOfFrames) * frames
        calling = ""
        if first.association_id is not None:
            association = session.get(Association, first.association_id)
            calling = association.calling_ae_title if association else ""
        return SeriesFacts.from_dataset(header, slices=frames, calling_ae_title=calling)

    def route_job(self, job_id: int) -> list[int]:
        """Apply the rules; one job per selected pipeline (the first reuses this row)."""
        with self.sessions.begin() as session:
            job = session.get(Job, job_id)
            if job is None or job.state != JobState.COMPLETE:
                return []
            series = session.get(Series, job.series_id)
            if series is not None and not series.is_image:
                job.transition(JobState.IGNORED, error_kind="not-an-image",
                               error_message="non-image objects (SR, PR, KO…) are kept, not "
                                             "segmented")
                return []
            # Imported here: the package pulls in the loader (SimpleITK), which the node's
            # warm-up imports between associations rather than at start-up.
            from converters.volume.sop_classes import is_volume_sop_class

            # Secondary captures, video… are images but never volumes, however many slices
            # they have; the loader refuses them too. The series row holds the first
            # instance's class only, so a CT series that merely starts with an SC page is
            # still routed (the loader sets the page aside). Unknown: left to the loader.
            if (series is not None and series.sop_class_uid
                    and not is_volume_sop_class(series.sop_class_uid)):
                classes = sorted(set(session.scalars(
                    select(Instance.sop_class_uid).where(Instance.series_id == job.series_id)))
                    | {series.sop_class_uid})
                if not any(is_volume_sop_class(uid) for uid in classes):
                    job.transition(JobState.IGNORED, error_kind="not-a-volume-sop-class",
                                   error_message=f"SOP class {', '.join(map(_describe, classes))}"
                                                 " is not a CT/MR/PET image class that forms a "
                                                 "volume: kept, not segmented")
                    return []
            try:
                facts = self._facts(session, job)
            except (JobError, OSError, pydicom.errors.InvalidDicomError) as exc:
                kind = exc.kind if isinstance(exc, JobError) else "unreadable"
                job.transition(JobState.FAILED, error_kind=kind, error_message=str(exc))
                return []
            decision = route(self.config.routing, facts)
            pairs = decision.pipelines
            if not pairs:
                job.transition(JobState.IGNORED, error_kind="no-rule-matches",
                               error_message=f"{facts.modality} {facts.orientation} series with "
                                             f"{facts.slices} slices matches no routing rule")
                return []
            jobs = [job]
            for _ in pairs[1:]:
                extra = Job(series_id=job.series_id, revision=job.revision, state=JobState.COMPLETE,
                            instance_count=job.instance_count, created_at=utcnow(),
                            updated_at=utcnow(), stage_times=dict(job.stage_times or {}))
                session.add(extra)
                jobs.append(extra)
            for target, (pipeline, rule) in zip(jobs, pairs):
                destinations = list(rule.destinations)
                target.pipeline, target.rule, target.priority = pipeline, rule.name, rule.priority
                target.destinations = destinations
                target.transition(JobState.ROUTED)
            session.flush()
            routed = [j.id for j in jobs]
        for routed_id, (pipeline, rule) in zip(routed, pairs):
            log_event(LOGGER, "job.routed", job=routed_id, pipeline=pipeline, rule=rule.name)
        return routed

    # -- running --------------------------------------------------------------------------
    def claim_next(self) -> int | None:
        """Take the next queued job (highest priority, then oldest) for this worker."""
        with self.sessions.begin() as session:
            candidates = session.scalars(
                select(Job.id).where(Job.state == JobState.ROUTED)
                .order_by(Job.priority.desc(), Job.id).limit(8)).all()
            for job_id in candidates:
                claimed = session.execute(
                    update(Job).where(Job.id == job_id, Job.state == JobState.ROUTED)
                    .values(state=JobState.LOADING)).rowcount
                if claimed:
                    job = session.get(Job, job_id)
                    assert job is not None
                    job.transition(JobState.LOADING)
                    job.attempts = (job.attempts or 0) + 1
                    return job_id
        return None

    def _set_state(self, job_id: int, state: JobState, **error: str) -> bool:
        """Move a job on unless a person cancelled it meanwhile (then False)."""
        with self.sessions.begin() as session:
            job = session.get(Job, job_id)
            if job is None or job.state == JobState.CANCELLED:
                return False
            job.transition(state, **error)
            return True

    def results_dir(self, job_id: int) -> Path:
        return self.results_root / f"{job_id:08d}"

    def run_job(self, job_id: int) -> None:
        """Load, segment and encode a claimed job; on success its deliveries are queued."""
        with self.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None and job.pipeline
            pipeline, destinations = job.pipeline, list(job.destinations or [])
            identity = SeriesIdentity(job.series.study.study_instance_uid,
                                      job.series.series_instance_uid)
            rows = session.scalars(select(Instance.path).where(Instance.series_id == job.series_id)
                                   .order_by(Instance.id)).all()
        paths = [self.spool_root / p for p in rows]
        final = self.results_dir(job_id)
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        started = time.perf_counter()

        def stage(state: str) -> None:
            if not self._set_state(job_id, JobState(state)):
                raise JobError("cancelled", "cancelled by a person")

        try:
            summary = self.processor(pipeline, paths, partial, stage, identity)
        except JobError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            if exc.kind != "cancelled":
                self._set_state(job_id, JobState.FAILED, error_kind=exc.kind,
                                error_message=str(exc))
            log_event(LOGGER, "job.failed", job=job_id, kind=exc.kind, reason=str(exc))
            return
        except Exception as exc:  # a bad series must never stop the worker; the reason is kept
            shutil.rmtree(partial, ignore_errors=True)
            kind = _error_kind(exc)
            self._set_state(job_id, JobState.FAILED, error_kind=kind,
                            error_message=f"{type(exc).__name__}: {exc}")
            log_event(LOGGER, "job.failed", job=job_id, kind=kind, reason=str(exc))
            return
        if self.config.storage.fsync:  # on disk before the job says they are there
            fsync_folder(partial)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)  # results appear whole or not at all
        if self.config.storage.fsync:
            fsync_path(final.parent)  # the rename itself
        with self.sessions.begin() as session:
            job = session.get(Job, job_id)
            assert job is not None
            if job.state == JobState.CANCELLED:
                return
            now = utcnow()
            for name in destinations:
                existing = session.scalar(select(Delivery).where(Delivery.job_id == job_id,
                                                                 Delivery.destination == name))
                if existing is None:
                    session.add(Delivery(job_id=job_id, destination=name, attempts=0,
                                         state=DeliveryState.PENDING, next_attempt_at=now))
                else:  # a re-run: deliver the new results again
                    existing.state, existing.next_attempt_at = DeliveryState.PENDING, now
                    existing.attempts, existing.error_kind = 0, None
            job.transition(JobState.DISPATCHING if destinations else JobState.DONE)
        log_event(LOGGER, "job.processed", job=job_id, pipeline=pipeline,
                  seconds=round(time.perf_counter() - started, 3),
                  structures=len(summary.get("structures", [])))

    # -- dispatch -------------------------------------------------------------------------
    def result_datasets(self, job_id: int) -> list[pydicom.Dataset]:
        folder = self.results_dir(job_id)
        return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]

    def dispatch_due(self, now: datetime | None = None) -> int:
        """Attempt every delivery whose time has come; returns how many were attempted."""
        now = now or utcnow()
        with self.sessions() as session:
            due = session.execute(
                select(Delivery.id, Delivery.job_id, Delivery.destination)
                .join(Job, Job.id == Delivery.job_id)
                .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now,
                       Job.state == JobState.DISPATCHING)
                .order_by(Delivery.next_attempt_at)).all()
        for delivery_id, job_id, destination in due:
            self._attempt(delivery_id, job_id, destination)
        return len(due)

    def _attempt(self, delivery_id: int, job_id: int, name: str) -> None:
        settings = self.config.dispatch
        destination = self.config.destinations.get(name)
        error: DeliveryError | None = None
        stored: list[str] = []
        if destination is None:
            error = DeliveryError("unknown-destination",
                                  f"destination {name!r} is no longer in config.yaml")
        else:
            try:
                report = deliver(name, destination, self.result_datasets(job_id),
                                 calling_ae_title=self.config.node.ae_title)
                stored = report.stored
            except DeliveryError as exc:
                error = exc
            except (OSError, ValueError) as exc:
                error = DeliveryError("unreadable-results", f"cannot read the results: {exc}")
        with self.sessions.begin() as session:
            delivery = session.get(Delivery, delivery_id)
            assert delivery is not None
            delivery.attempts += 1
            if error is None:
                delivery.state, delivery.delivered_at = DeliveryState.DELIVERED, utcnow()
                delivery.stored, delivery.error_kind, delivery.error_message = stored, None, None
            elif delivery.attempts >= settings.max_attempts:
                delivery.state = DeliveryState.DEAD
                delivery.error_kind, delivery.error_message = error.reason, str(error)
            else:
                wait = backoff(delivery.attempts, settings.initial_backoff, settings.max_backoff)
                delivery.next_attempt_at = utcnow() + timedelta(seconds=wait)
                delivery.error_kind, delivery.error_message = error.reason, str(error)
            self._settle(session, job_id)
        if error is None:
            log_event(LOGGER, "delivery.done", job=job_id, destination=name, objects=len(stored))
        else:
            log_event(LOGGER, "delivery.failed", job=job_id, destination=name,
                      kind=error.reason, reason=str(error))

    def _settle(self, session: Session, job_id: int) -> None:
        """A dispatching job is done once every delivery is, dead once any gave up."""
        job = session.get(Job, job_id)
        if job is None or job.state != JobState.DISPATCHING:
            return
        deliveries = session.scalars(select(Delivery).where(Delivery.job_id == job_id)).all()
        dead = [d for d in deliveries if d.state == DeliveryState.DEAD]
        if dead:
            job.transition(JobState.DEAD, error_kind=dead[0].error_kind or "undeliverable",
                           error_message=f"{dead[0].destination}: {dead[0].error_message}")
        elif all(d.state == DeliveryState.DELIVERED for d in deliveries):
            job.transition(JobState.DONE)

    def check_destinations(self) -> dict[str, tuple[bool, str]]:
        """C-ECHO every DICOM destination and record the answer for ``status``."""
        results = {}
        for name, destination in self.config.destinations.items():
            results[name] = echo(destination, calling_ae_title=self.config.node.ae_title)
        with self.sessions.begin() as session:
            for name, (reachable, detail) in results.items():
                row = session.get(DestinationHealth, name) or DestinationHealth(destination=name)
                row.reachable, row.detail, row.checked_at = reachable, detail, utcnow()
                session.add(row)
        return results

    # -- people ---------------------------------------------------------------------------
    def retry(self, job_id: int) -> str:
        """Re-queue a failed, dead or cancelled job: re-deliver if its results exist, else re-run."""
        with self.sessions.begin() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobError("unknown-job", f"there is no job {job_id}")
            if job.state not in RETRYABLE_STATES:
                raise JobError("not-retryable", f"job {job_id} is {job.state}; only "
                               f"{', '.join(RETRYABLE_STATES)} jobs can be retried")
            deliveries = session.scalars(select(Delivery).where(Delivery.job_id == job_id)).all()
            undelivered = [d for d in deliveries if d.state != DeliveryState.DELIVERED]
            if self.results_dir(job_id).is_dir() and undelivered:
                for delivery in undelivered:
                    delivery.state, delivery.attempts = DeliveryState.PENDING, 0
                    delivery.next_attempt_at = utcnow()
                job.transition(JobState.DISPATCHING)
                return "dispatching"
            job.transition(JobState.ROUTED if job.pipeline else JobState.COMPLETE)
            return job.state

    def cancel(self, job_id: int) -> None:
        with self.sessions.begin() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobError("unknown-job", f"there is no job {job_id}")
            if job.state not in CANCELLABLE_STATES:
                raise JobError("not-cancellable", f"job {job_id} is already {job.state}")
            job.transition(JobState.CANCELLED, error_kind="cancelled",
                           error_message="cancelled by a person")

    # -- retention ------------------------------------------------------------------------
    def purge(self, *, free_bytes: int | None = None, now: datetime | None = None) -> list[int]:
        """Delete spool files and results of finished jobs past ``retention.keep_done_hours``;
        when ``free_bytes`` is under the emergency threshold, the oldest finished jobs go first
        regardless of age. A job whose series still has an unfinished job is never purged."""
        retention = self.config.retention
        now = now or utcnow()
        emergency = (free_bytes is not None and
                     free_bytes < self.config.storage.min_free * retention.emergency_factor)
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
                if not emergency and _aware(job.updated_at) > cutoff:
                    continue
                shutil.rmtree(self.results_dir(job.id), ignore_errors=True)
                for instance in session.scalars(select(Instance).where(
                        Instance.series_id == job.series_id)).all():
                    (self.spool_root / instance.path).unlink(missing_ok=True)
                    session.delete(instance)
                job.stage_times = {**(job.stage_times or {}), "purged": utcnow().isoformat()}
                purged.append(job.id)
                if emergency:
                    break  # one at a time: the caller re-measures free space
        for job_id in purged:
            log_event(LOGGER, "job.purged", job=job_id, emergency=emergency)
        return purged


def _aware(moment: datetime) -> datetime:
    from datetime import timezone
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _describe(uid: str) -> str:
    """``Name (uid)`` of a UID pydicom knows, else the bare UID."""
    name = pydicom.uid.UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def _error_kind(exc: Exception) -> str:
    """A short kind for an exception from a stage, e.g. ``SliceMissingError`` → ``slice-missing``."""
    import re
    name = type(exc).__name__.removesuffix("Error")
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower() or "error"
