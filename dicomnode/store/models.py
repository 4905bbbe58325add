"""The index: what the node holds, in DICOM's own hierarchy, plus the association audit and jobs.

Study → Series → Instance mirrors the DICOM information model (PS3.3 A.1.2). The spool file is
the instance itself; a row here says it is complete, durable and where it lies. ``Rejection``
keeps every C-STORE we answered with a failure status, so an operator can see why a sender's
image is not here. ``Job`` is the seam for later stages: one row per complete series revision,
moved through states by routing, inference and dispatch.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: DICOM UIDs are at most 64 characters (PS3.5 9.1).
UID = String(64)


def utcnow() -> datetime:
    """Now, timezone-aware UTC (all timestamps in the index are UTC)."""
    return datetime.now(timezone.utc)


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
    state: Mapped[str] = mapped_column(String(16), default="receiving", index=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
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
    #: ``open``, ``released``, ``aborted`` or ``rejected``.
    outcome: Mapped[str] = mapped_column(String(16), default="open", index=True)
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


class Job(Base):
    """One unit of work for later stages: a complete series at a given revision.

    Created in state ``complete`` by the assembler. Later stages (routing, inference, dispatch)
    move it on with :meth:`transition`, which keeps ``stage_times`` (state → first time it was
    entered, ISO 8601 UTC) so every stage stays visible without schema changes. A failure sets
    ``error_kind`` (a short machine-readable word) and ``error_message`` (for a person).
    """

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(32), index=True)
    instance_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stage_times: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Set by routing (dicomnode.jobs): the pipeline this job runs, the rule that chose it,
    #: its queue priority (higher first) and the destination names its results go to.
    pipeline: Mapped[str | None] = mapped_column(String(64))
    rule: Mapped[str | None] = mapped_column(String(128))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    destinations: Mapped[list[str]] = mapped_column(JSON, default=list)
    error_kind: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    series: Mapped[Series] = relationship(back_populates="jobs")

    def transition(self, state: str, *, error_kind: str | None = None,
                   error_message: str | None = None) -> None:
        """Move to ``state``, stamping the time; errors are cleared unless given."""
        now = utcnow()
        self.state = state
        self.updated_at = now
        self.stage_times = {**(self.stage_times or {}), state: now.isoformat()}
        self.error_kind = error_kind
        self.error_message = error_message
