"""The dispatch stage: each job's results on their way to each destination, with retries.

A finished run queues one :class:`~dicomnode.store.Delivery` per destination of its rule and,
with ``dispatch.return_to_sender``, one named ``sender:<AE>`` back to the AE that sent the series
(its address from ``dispatch.return_to``). Every delivery has its own attempts and back-off,
kept in the database so they survive a restart; one that uses up ``dispatch.max_attempts``
is dead, and so is its job, until a person retries it.

A rule's ``forward`` adds deliveries named ``forward:<destination>`` of the source series
(:mod:`dicomnode.forward`); ``forward_when: received`` ones are attempted whatever state the
job is in. Destinations that name a ``deidentify`` profile get de-identified copies of
everything, results included, with UIDs remapped by the same key so references still resolve.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pydicom
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Config, ConfigError, ConfigProblem, DestinationConfig
from dicomnode.dispatcher.send import DeliveryError, deliver
from dicomnode.forward import (
    FORWARD_PREFIX,
    Prepared,
    forward_delivery,
    forwarded_destination,
    prepare,
    record_pseudonyms,
    source_datasets,
)
from dicomnode.logs import log_event
from dicomnode.storage import ResultsStore, StorageLayout
from dicomnode.store import Delivery, DeliveryState, Job, JobState, utcnow

LOGGER = logging.getLogger("dicomnode.jobs")

#: Delivery names of returns to the sender: ``sender:<calling AE title>``.
SENDER_PREFIX = "sender:"
#: Reasons no retry can cure before the configuration changes (which needs a restart): the
#: delivery is dead at once, for a person to see.
PERMANENT = frozenset({"unknown-sender", "unknown-destination", "deid-key"})


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): doubling, capped."""
    return float(min(maximum, initial * 2 ** (attempt - 1)))


def sender_delivery(ae_title: str) -> str:
    return f"{SENDER_PREFIX}{ae_title}"


class Dispatcher:
    def __init__(self, config: Config, sessions: sessionmaker[Session], results: ResultsStore):
        self.config = config
        self.sessions = sessions
        self.results = results

    def prepare(self) -> None:
        """Read the site key when a destination de-identifies; a :class:`ConfigError` names
        its key. ``serve`` calls it at start, so a missing key stops it at once rather than
        killing every de-identified delivery."""
        deid = self.config.deidentification
        if not any(d.deidentify for d in self.config.destinations.values()):
            return
        try:
            deid.key()
        except ValueError as exc:
            key = "deidentification." + ("key_env" if deid.key_env else "key_file")
            raise ConfigError(None, [ConfigProblem(key, str(exc))]) from None

    def targets(self, job: Job) -> list[str]:
        """Delivery names of a job: its rule's destinations, then the sender if asked for."""
        names = list(job.destinations or [])
        if self.config.dispatch.return_to_sender and job.sender:
            names.append(sender_delivery(job.sender))
        return names

    def resolve(self, name: str) -> DestinationConfig | DeliveryError:
        """The destination behind a delivery name, or the error a delivery to it gets."""
        if name.startswith(SENDER_PREFIX):
            ae_title = name[len(SENDER_PREFIX):]
            destination = self.config.dispatch.sender_destination(ae_title)
            if destination is None:
                return DeliveryError("unknown-sender",
                                     f"the series came from AE {ae_title!r}, which "
                                     "dispatch.return_to does not list: add its host and port")
            return destination
        configured = self.config.destinations.get(forwarded_destination(name) or name)
        if configured is None:
            return DeliveryError("unknown-destination",
                                 f"destination {name!r} is no longer in config.yaml")
        return configured

    def queue(self, session: Session, job: Job) -> None:
        """Results of ``job`` are committed: queue (or re-queue) its deliveries, due now."""
        now = utcnow()
        names = self.targets(job)
        for name in names:
            existing = session.scalar(select(Delivery).where(Delivery.job_id == job.id,
                                                             Delivery.destination == name))
            if existing is None:
                session.add(Delivery(job_id=job.id, destination=name, attempts=0,
                                     state=DeliveryState.PENDING, next_attempt_at=now))
            else:  # a re-run: deliver the new results again
                existing.state, existing.next_attempt_at = DeliveryState.PENDING, now
                existing.attempts, existing.error_kind = 0, None
        job.transition(JobState.DISPATCHING if names else JobState.DONE)

    def requeue_undelivered(self, session: Session, job: Job) -> bool:
        """For a person's retry: send again what was not delivered (True if anything)."""
        undelivered = [d for d in session.scalars(select(Delivery).where(
            Delivery.job_id == job.id)) if d.state != DeliveryState.DELIVERED]
        forwards_only = all(forwarded_destination(d.destination) for d in undelivered)
        if not undelivered or not (forwards_only or self.results.exists(job.id)):
            return False
        for delivery in undelivered:
            delivery.state, delivery.attempts = DeliveryState.PENDING, 0
            delivery.next_attempt_at = utcnow()
        job.transition(JobState.DISPATCHING)
        return True

    def requeue_dead(self, session: Session, destination: str) -> list[int]:
        """For a person, once a destination is back: send again every delivery to it that gave
        up (its dead letters) whose results are still held; their jobs go back to
        dispatching. Returns those jobs' ids."""
        dead = session.scalars(select(Delivery).where(
            Delivery.destination.in_([destination, forward_delivery(destination)]),
            Delivery.state == DeliveryState.DEAD).order_by(Delivery.job_id)).all()
        requeued = []
        for delivery in dead:
            job = session.get(Job, delivery.job_id)
            forward = forwarded_destination(delivery.destination) is not None
            if job is None or not (forward or self.results.exists(job.id)):
                continue  # nothing left to send (its results were purged)
            delivery.state, delivery.attempts = DeliveryState.PENDING, 0
            delivery.next_attempt_at = utcnow()
            # a forward sent as received goes again whatever its job does meanwhile; only a
            # job it (or a result delivery) killed goes back to dispatching
            if job.state != JobState.DISPATCHING and (not forward or job.state == JobState.DEAD):
                job.transition(JobState.DISPATCHING)
            requeued.append(job.id)
        return requeued

    def result_datasets(self, job_id: int) -> list[pydicom.Dataset]:
        folder = self.results.folder(job_id)
        return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]

    def dispatch_due(self, now: datetime | None = None) -> int:
        """Attempt every delivery whose time has come; returns how many were attempted."""
        now = now or utcnow()
        with self.sessions() as session:
            due = session.execute(
                select(Delivery.id, Delivery.job_id, Delivery.destination)
                .join(Job, Job.id == Delivery.job_id)
                .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now,
                       or_(Job.state == JobState.DISPATCHING,
                           # forwarded as received: whatever becomes of the job
                           Delivery.destination.startswith(FORWARD_PREFIX)
                           & Job.state.notin_([JobState.CANCELLED, JobState.SUPERSEDED])))
                .order_by(Delivery.next_attempt_at)).all()
        for delivery_id, job_id, destination in due:
            self.attempt(delivery_id, job_id, destination)
        return len(due)

    def prepared(self, job_id: int, name: str, target: DestinationConfig) -> Prepared:
        """What delivery ``name`` of the job sends to ``target`` (the source series for a
        forward, else the results), de-identified when ``target`` names a profile."""
        forward = forwarded_destination(name) is not None
        if forward:
            with self.sessions() as session:
                job = session.get(Job, job_id)
                assert job is not None
                datasets = source_datasets(session, StorageLayout.of(self.config.storage).spool,
                                           job.series_id)
        else:
            datasets = self.result_datasets(job_id)
        if target.deidentify is not None:
            try:
                self.config.deidentification.key()
            except ValueError as exc:  # no retry helps until the key is configured
                raise DeliveryError("deid-key", f"cannot de-identify: {exc}") from None
        return prepare(datasets, target, self.config.deidentification, source=forward)

    def attempt(self, delivery_id: int, job_id: int, name: str) -> None:
        settings = self.config.dispatch
        target = self.resolve(name)
        error: DeliveryError | None = target if isinstance(target, DeliveryError) else None
        stored: list[str] = []
        prepared: Prepared | None = None
        if isinstance(target, DestinationConfig):
            try:
                prepared = self.prepared(job_id, name, target)
                if prepared.datasets:
                    stored = deliver(name, target, prepared.datasets,
                                     calling_ae_title=self.config.node.ae_title).stored
            except DeliveryError as exc:
                error = exc
            except (OSError, ValueError) as exc:
                error = DeliveryError("unreadable-results", f"cannot read the results: {exc}")
        with self.sessions.begin() as session:
            delivery = session.get(Delivery, delivery_id)
            assert delivery is not None
            delivery.attempts += 1
            if prepared is not None:
                delivery.profile, delivery.withheld = prepared.profile, prepared.withheld
            if error is None:
                delivery.state, delivery.delivered_at = DeliveryState.DELIVERED, utcnow()
                delivery.stored, delivery.error_kind, delivery.error_message = stored, None, None
                if prepared is not None and prepared.profile is not None \
                        and self.config.deidentification.store_mapping:
                    record_pseudonyms(session, prepared)
            elif delivery.attempts >= settings.max_attempts or error.reason in PERMANENT:
                delivery.state = DeliveryState.DEAD
                delivery.error_kind, delivery.error_message = error.reason, str(error)
            else:
                wait = backoff(delivery.attempts, settings.initial_backoff, settings.max_backoff)
                delivery.next_attempt_at = utcnow() + timedelta(seconds=wait)
                delivery.error_kind, delivery.error_message = error.reason, str(error)
            self._settle(session, job_id)
        if error is None:
            withheld = prepared.withheld if prepared is not None else []
            log_event(LOGGER, "delivery.done", job=job_id, destination=name, objects=len(stored),
                      profile=prepared.profile if prepared is not None else None,
                      withheld=len(withheld))
            for item in withheld:
                log_event(LOGGER, "delivery.withheld", job=job_id, destination=name,
                          sop=item["sop"], reason=item["reason"])
        else:
            log_event(LOGGER, "delivery.failed", job=job_id, destination=name,
                      kind=error.reason, reason=str(error))

    @staticmethod
    def _settle(session: Session, job_id: int) -> None:
        """A dispatching job is done once every delivery is, dead once any gave up and none is
        still pending (only a dispatching job's deliveries are attempted: the others would
        never reach their destinations)."""
        job = session.get(Job, job_id)
        if job is None or job.state != JobState.DISPATCHING:
            return
        deliveries = session.scalars(select(Delivery).where(Delivery.job_id == job_id)).all()
        if any(d.state == DeliveryState.PENDING for d in deliveries):
            return
        dead = [d for d in deliveries if d.state == DeliveryState.DEAD]
        if dead:
            job.transition(JobState.DEAD, error_kind=dead[0].error_kind or "undeliverable",
                           error_message=f"{dead[0].destination}: {dead[0].error_message}")
        elif all(d.state == DeliveryState.DELIVERED for d in deliveries):
            job.transition(JobState.DONE)
