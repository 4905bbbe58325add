"""The index: what the node holds, in DICOM's own hierarchy, plus the association audit and jobs.

Study → Series → Instance mirrors the DICOM information model (PS3.3 A.1.2). The spool file is
the instance itself; a row here says it is complete, durable and where it lies. ``Rejection``
keeps every C-STORE we answered with a failure status, so an operator can see why a sender's
image is not here. Jobs and deliveries are in :mod:`dicomnode.store.jobs`; ``WebhookEvent``
is the outbox of their final states for webhooks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

if TYPE_CHECKING:
    from dicomnode.store.jobs import Job

#: DICOM UIDs are at most 64 characters (PS3.5 9.1).
UID = String(64)


def utcnow() -> datetime:
    """Now, timezone-aware UTC (all timestamps in the index are UTC)."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """A timestamp read back from the index as aware UTC: SQLite returns naive datetimes."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def state_column(states: type[StrEnum], length: int = 32) -> Enum:
    """A column type holding a state enum as its value strings (VARCHAR, no native ENUM),
    so rows written before a state existed still read back and new states need no migration
    on PostgreSQL."""
    return Enum(states, native_enum=False, length=length, create_constraint=False,
                values_callable=lambda members: [m.value for m in members])


class SeriesState(StrEnum):
    """Assembly state of a series (see :mod:`dicomnode.assembler`)."""

    RECEIVING = "receiving"
    COMPLETE = "complete"


class AssociationOutcome(StrEnum):
    OPEN = "open"
    RELEASED = "released"
    ABORTED = "aborted"
    REJECTED = "rejected"


class Base(DeclarativeBase):
    pass


class Study(Base):
    """A DICOM study (Study Instance UID, 0020,000D)."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    #: True when the sender left Study Instance UID empty and the node derived one (README).
    uid_synthesized: Mapped[bool] = mapped_column(Boolean, default=False)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    study_date: Mapped[str | None] = mapped_column(String(8))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    """A DICOM series (Series Instance UID, 0020,000E) and its assembly state.

    ``state`` is ``receiving`` while instances arrive and ``complete`` once
    ``assembly.series_timeout`` seconds passed without a new one. A new instance after
    completion reopens the series and bumps ``revision``.
    """

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    uid_synthesized: Mapped[bool] = mapped_column(Boolean, default=False)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_description: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[str | None] = mapped_column(String(12))
    #: SOP Class of the first instance; decides whether the series is an image series.
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    #: False for SR, PR, KO and other non-image objects: stored, never an image job.
    is_image: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[SeriesState] = mapped_column(state_column(SeriesState, 16),
                                               default=SeriesState.RECEIVING, index=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    #: Bytes of every instance ever stored in the series (spool file sizes); like
    #: ``instance_count`` it only grows (retention deletes instances, not series). Nullable:
    #: an index made before it existed gets the column, empty, at the next start.
    bytes_received: Mapped[int | None] = mapped_column(BigInteger, default=0)
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True),
                                                        index=True)  # the lists' order
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    study: Mapped[Study] = relationship(back_populates="series")
    jobs: Mapped[list[Job]] = relationship(back_populates="series")


class Instance(Base):
    """A composite SOP instance held in the spool (SOP Instance UID, 0008,0018)."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[str | None] = mapped_column(String(12))
    #: Path relative to the spool root: ``<study>/<series>/<sop>.dcm``.
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    #: Frames the instance holds (``converters.instance.frame_count``); NULL for rows of
    #: older versions, counted as 1.
    frames: Mapped[int | None] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: How many times the instance was received (resends are acknowledged and counted).
    receive_count: Mapped[int] = mapped_column(Integer, default=1)
    #: What makes a resend a duplicate rather than a conflict (SOP class, study, series,
    #: transfer syntax, pixel bytes; ``DatasetSummary.content_digest``). NULL for rows of
    #: older versions: their resends count as duplicates.
    content_digest: Mapped[str | None] = mapped_column(String(64))
    association_id: Mapped[int | None] = mapped_column(ForeignKey("associations.id"))


class Association(Base):
    """Audit of one DICOM association (accepted or rejected), one row each."""

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    called_ae_title: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(64))
    port: Mapped[int | None] = mapped_column(Integer)
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[AssociationOutcome] = mapped_column(
        state_column(AssociationOutcome, 16), default=AssociationOutcome.OPEN, index=True)
    #: Why an association was rejected or ended (``calling-ae-not-allowed``,
    #: ``released-by-peer``, ``protocol-error``... see ``receiver.errors``).
    reason: Mapped[str | None] = mapped_column(String(64))
    #: More words on the reason, for a person (a TLS error, the refused contexts...).
    detail: Mapped[str | None] = mapped_column(Text)
    instances_stored: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)


class Rejection(Base):
    """A C-STORE answered with a failure status; the instance is not in the index."""

    __tablename__ = "rejections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    association_id: Mapped[int | None] = mapped_column(ForeignKey("associations.id"), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    #: Typed reason, see :class:`dicomnode.receiver.errors.RejectKind`.
    kind: Mapped[str] = mapped_column(String(32), index=True)
    message: Mapped[str] = mapped_column(Text)
    #: The DIMSE status returned to the sender (e.g. 0xA700, 0xC000).
    status: Mapped[int] = mapped_column(Integer)
    #: Where the bytes were kept for inspection (relative to the spool), if they were.
    quarantine_path: Mapped[str | None] = mapped_column(Text)


class OperatorAction(Base):
    """Audit of what people do through the console and its API: retry, cancel, echo, and
    refused logins; one row each, with who, from where and when."""

    __tablename__ = "operator_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    #: The user name (``anonymous`` on an open console; the name tried for a refused login).
    user: Mapped[str] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(String(64))
    #: ``retry``, ``cancel``, ``echo`` or ``login-failed``.
    action: Mapped[str] = mapped_column(String(32), index=True)
    #: What it was done to: ``job:<id>``, ``destination:<name>``.
    target: Mapped[str | None] = mapped_column(String(128))
    #: ``ok``, or the kind of error that stopped it (``not-retryable``, ``unreachable``...).
    outcome: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)


class WebhookState(StrEnum):
    """Where an event is on its way to a webhook (see :mod:`dicomnode.webhooks`)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    GIVEN_UP = "given-up"      # every attempt failed, or the webhook left config.yaml


class WebhookEvent(Base):
    """The outbox: one event of one job for one webhook, written in the transaction that
    moved the job to its final state (so a restart loses none), then POSTed with retries."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    #: A name under ``webhooks`` in config.yaml.
    webhook: Mapped[str] = mapped_column(String(64), index=True)
    #: ``done``, ``failed`` or ``dead``.
    event: Mapped[str] = mapped_column(String(16))
    #: Sent as ``event_id`` and ``X-Dicomnode-Delivery``: the same on every retry, so a
    #: receiver that got an event whose answer was lost can tell the repeat.
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    #: The JSON body, as it was when the job reached the state.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[WebhookState] = mapped_column(state_column(WebhookState, 16),
                                                default=WebhookState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    #: Every attempt: ``{"at", "status" (HTTP status or null), "error", "seconds"}``.
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class Pseudonym(Base):
    """What a de-identifying destination got instead of an identity, kept only with
    ``deidentification.store_mapping`` so that an operator can re-identify
    (``dicomnode deid lookup``). One row per (kind, pseudonym)."""

    __tablename__ = "pseudonyms"
    __table_args__ = (UniqueConstraint("kind", "pseudonym"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: ``patient`` (Patient ID), ``study`` or ``series`` (instance UIDs).
    kind: Mapped[str] = mapped_column(String(16))
    pseudonym: Mapped[str] = mapped_column(String(64), index=True)
    original: Mapped[str] = mapped_column(String(64))
    #: The profile (and so the destinations) that used it; the first one seen.
    profile: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
