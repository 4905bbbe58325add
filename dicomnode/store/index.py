"""Writes on the receive path: index an instance, record a rejection, audit associations.

These run once per C-STORE on the association's thread, so they use SQLAlchemy Core in one short
transaction each. The row is committed before the receiver answers 0x0000.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import ReturningInsert

from dicomnode.grouping import SeriesKey, StudyKey
from dicomnode.store.models import (
    Association,
    AssociationOutcome,
    Instance,
    Rejection,
    Series,
    SeriesState,
    Study,
    utcnow,
)

# Declarative classes type __table__ as any FromClause; these are plain mapped tables.
_studies = cast(Table, Study.__table__)
_series = cast(Table, Series.__table__)
_instances = cast(Table, Instance.__table__)
_associations = cast(Table, Association.__table__)
_rejections = cast(Table, Rejection.__table__)


@dataclass(frozen=True)
class InstanceRecord:
    """One instance already durable in the spool, ready to be indexed."""

    study: StudyKey
    series: SeriesKey
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    instance_number: str | None
    path: str
    size: int
    association_id: int | None
    content_digest: str | None = None
    frames: int = 1


@dataclass(frozen=True)
class IndexOutcome:
    """What indexing did: ``arm_timer`` is True when the series started (or restarted)
    receiving and so needs a completion timer. ``inserted`` is False when another copy was
    indexed first; ``held_digest`` is then that copy's content digest."""

    series_id: int
    series_instance_uid: str
    arm_timer: bool
    inserted: bool = True
    held_digest: str | None = None


@dataclass(frozen=True)
class HeldInstance:
    """An instance already in the index, as a resend is compared with it."""

    path: str
    content_digest: str | None


def _insert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


# The receive path's statements, built once: their values are bound parameters, so each call
# only executes (SQLAlchemy's compiled cache keeps their SQL). Building them per instance
# with .values(...) coerced every literal: a third of the index's time (py-spy, issue 17).
_FIND_INSTANCE = select(_instances.c.path, _instances.c.content_digest).where(
    _instances.c.sop_instance_uid == bindparam("sop_instance_uid"))
_FIND_SERIES = select(_series.c.id, _series.c.state).where(
    _series.c.series_instance_uid == bindparam("series_instance_uid"))
_FIND_STUDY = select(_studies.c.id).where(
    _studies.c.study_instance_uid == bindparam("study_instance_uid"))
_HELD_DIGEST = select(_instances.c.content_digest).where(
    _instances.c.sop_instance_uid == bindparam("sop_instance_uid"))
_COUNT_SERIES_INSTANCE = (
    update(_series).where(_series.c.id == bindparam("series_id"))
    .values(instance_count=_series.c.instance_count + 1,
            last_received_at=bindparam("now"),
            bytes_received=func.coalesce(_series.c.bytes_received, 0) + bindparam("size")))
#: A new instance in a series no longer receiving reopens it.
_REOPEN_SERIES = _COUNT_SERIES_INSTANCE.values(
    state=SeriesState.RECEIVING, revision=_series.c.revision + 1, completed_at=None)
_COUNT_STORED = (update(_associations).where(_associations.c.id == bindparam("association_id"))
                 .values(instances_stored=_associations.c.instances_stored + 1))
# An UPDATE's bound parameters may not be named as one of its table's columns.
_COUNT_RESEND = (update(_instances)
                 .where(_instances.c.sop_instance_uid == bindparam("uid"))
                 .values(receive_count=_instances.c.receive_count + 1))
_COUNT_DUPLICATE = (update(_associations).where(_associations.c.id == bindparam("association_id"))
                    .values(duplicates=_associations.c.duplicates + 1))
#: INSERT ... ON CONFLICT DO NOTHING RETURNING id per (dialect, table), for the unique UID
#: column: a row back means it was inserted. (rowcount cannot tell: with the RETURNING
#: PostgreSQL gets for the primary key, psycopg reports -1 either way.)
_UPSERTS: dict[tuple[str, str], ReturningInsert[Any]] = {}


def _insert_new(conn: Connection, table: Table, key: str) -> ReturningInsert[Any]:
    """``INSERT ... ON CONFLICT (key) DO NOTHING RETURNING id`` into ``table``, built once per
    dialect."""
    cached = _UPSERTS.get((conn.dialect.name, table.name))
    if cached is None:
        cached = (_insert(conn, table).on_conflict_do_nothing(index_elements=[key])
                  .returning(table.c.id))
        _UPSERTS[(conn.dialect.name, table.name)] = cached
    return cached


class InstanceIndex:
    """The receive path's view of the database (one per running node)."""

    def __init__(self, engine: Engine):
        #: An engine whose transactions take the write lock at BEGIN (see database.py).
        self.engine = engine

    def find_instance(self, sop_instance_uid: str) -> HeldInstance | None:
        """The instance held under a SOP Instance UID, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(_FIND_INSTANCE, {"sop_instance_uid": sop_instance_uid}).first()
        return None if row is None else HeldInstance(row.path, row.content_digest)

    def known_paths(self) -> set[str]:
        """Spool paths of every indexed instance (start-up recovery compares the spool)."""
        with self.engine.connect() as conn:
            return set(conn.execute(select(_instances.c.path)).scalars())

    def count_duplicate(self, sop_instance_uid: str, association_id: int | None) -> None:
        """A resend of an instance we hold: acknowledged, counted, nothing rewritten."""
        with self.engine.begin() as conn:
            conn.execute(_COUNT_RESEND, {"uid": sop_instance_uid})
            if association_id is not None:
                conn.execute(_COUNT_DUPLICATE, {"association_id": association_id})

    def add_instance(self, record: InstanceRecord) -> IndexOutcome:
        """Index a durable spool file: study and series rows are created on first sight.

        A new instance in a ``complete`` series reopens it (state ``receiving``, revision + 1).
        """
        now = utcnow()
        with self.engine.begin() as conn:
            series_row = conn.execute(_FIND_SERIES, {
                "series_instance_uid": record.series.series_instance_uid}).first()
            if series_row is None:
                series_id = self._create_series(conn, record, now)
                previous_state, created = SeriesState.RECEIVING, True
            else:
                series_id, previous_state, created = series_row.id, series_row.state, False
            inserted = conn.execute(_insert_new(conn, _instances, "sop_instance_uid"), {
                "sop_instance_uid": record.sop_instance_uid, "series_id": series_id,
                "sop_class_uid": record.sop_class_uid,
                "transfer_syntax_uid": record.transfer_syntax_uid,
                "instance_number": record.instance_number, "path": record.path,
                "size": record.size, "received_at": now, "receive_count": 1,
                "association_id": record.association_id,
                "content_digest": record.content_digest, "frames": record.frames,
            }).first()
            if inserted is None:  # indexed first by another path (recovery): the caller decides
                held = conn.execute(_HELD_DIGEST, {
                    "sop_instance_uid": record.sop_instance_uid}).scalar()
                return IndexOutcome(series_id, record.series.series_instance_uid, False,
                                    inserted=False, held_digest=held)
            reopened = previous_state != SeriesState.RECEIVING
            conn.execute(_REOPEN_SERIES if reopened else _COUNT_SERIES_INSTANCE,
                         {"series_id": series_id, "now": now, "size": record.size})
            if record.association_id is not None:
                conn.execute(_COUNT_STORED, {"association_id": record.association_id})
        return IndexOutcome(series_id, record.series.series_instance_uid, created or reopened)

    @staticmethod
    def _create_series(conn: Connection, record: InstanceRecord, now: datetime) -> int:
        study, series = record.study, record.series
        # The id comes back from the INSERT, or, if another writer made the row, from a SELECT.
        study_id = conn.execute(_insert_new(conn, _studies, "study_instance_uid"), {
            "study_instance_uid": study.study_instance_uid,
            "uid_synthesized": study.uid_synthesized, "patient_id": study.patient_id,
            "patient_name": study.patient_name, "study_date": study.study_date,
            "accession_number": study.accession_number,
            "study_description": study.study_description, "first_received_at": now}).scalar()
        if study_id is None:
            study_id = conn.execute(_FIND_STUDY, {
                "study_instance_uid": study.study_instance_uid}).scalar_one()
        series_id = conn.execute(_insert_new(conn, _series, "series_instance_uid"), {
            "series_instance_uid": series.series_instance_uid, "study_id": study_id,
            "uid_synthesized": series.uid_synthesized, "modality": series.modality,
            "series_description": series.series_description,
            "series_number": series.series_number, "sop_class_uid": series.sop_class_uid,
            "is_image": series.is_image, "state": SeriesState.RECEIVING, "revision": 1,
            "instance_count": 0, "first_received_at": now, "last_received_at": now}).scalar()
        if series_id is None:
            series_id = conn.execute(_FIND_SERIES, {
                "series_instance_uid": series.series_instance_uid}).scalar_one()
        return int(series_id)

    def add_rejection(self, *, association_id: int | None, sop_instance_uid: str | None,
                      sop_class_uid: str | None, kind: str, message: str, status: int,
                      quarantine_path: str | None = None) -> None:
        """Record a C-STORE answered with a failure status (never indexed as an instance)."""
        with self.engine.begin() as conn:
            conn.execute(_rejections.insert().values(
                association_id=association_id, received_at=utcnow(),
                sop_instance_uid=sop_instance_uid, sop_class_uid=sop_class_uid, kind=kind,
                message=message, status=status, quarantine_path=quarantine_path))
            if association_id is not None:
                conn.execute(update(_associations)
                             .where(_associations.c.id == association_id)
                             .values(failures=_associations.c.failures + 1))

    def open_association(self, *, calling_ae_title: str, called_ae_title: str, address: str,
                         port: int | None, tls: bool,
                         outcome: AssociationOutcome = AssociationOutcome.OPEN,
                         reason: str | None = None, detail: str | None = None) -> int:
        """Start the audit row of an association; rejected ones are closed at once."""
        now = utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(_associations.insert().values(
                calling_ae_title=calling_ae_title, called_ae_title=called_ae_title,
                address=address, port=port, tls=tls, started_at=now,
                ended_at=None if outcome == AssociationOutcome.OPEN else now, outcome=outcome,
                reason=reason,
                detail=detail, instances_stored=0, duplicates=0, failures=0))
            key = result.inserted_primary_key
            assert key is not None  # a single-row INSERT
            return int(key[0])

    def close_association(self, association_id: int, outcome: AssociationOutcome, reason: str,
                          detail: str | None = None) -> None:
        """Finish the audit row: ``released`` or ``aborted``, and why."""
        with self.engine.begin() as conn:
            conn.execute(update(_associations)
                         .where(_associations.c.id == association_id,
                                _associations.c.outcome == AssociationOutcome.OPEN)
                         .values(outcome=outcome, reason=reason, detail=detail,
                                 ended_at=utcnow()))

    def close_open_associations(self) -> int:
        """After a crash, associations still ``open`` were cut off: mark them ``aborted``."""
        with self.engine.begin() as conn:
            return conn.execute(update(_associations)
                                .where(_associations.c.outcome == AssociationOutcome.OPEN)
                                .values(outcome=AssociationOutcome.ABORTED,
                                        reason="node-restarted",
                                        ended_at=utcnow())).rowcount
