"""The receive path's index writes (:class:`dicomnode.store.InstanceIndex`), on SQLite and
PostgreSQL: rows, counters, conflicts and the reopening of a complete series."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from dicomnode.grouping import SeriesKey, StudyKey
from dicomnode.store import InstanceIndex, InstanceRecord, create_schema, make_engine
from dicomnode.store.models import Association, Instance, Series, SeriesState, Study

STUDY = StudyKey("1.2.3", False, "PID", "Doe^J", "20240101", "ACC", "CT head")
SERIES = SeriesKey("1.2.3.4", False, "CT", "axial", "2", "1.2.840.10008.5.1.4.1.1.2", True)


@pytest.fixture
def index(database_url: str, tmp_path: Path) -> Iterator[InstanceIndex]:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'index.db'}", immediate=True)
    create_schema(engine)
    yield InstanceIndex(engine)
    engine.dispose()


def record(uid: str, association: int | None, digest: str = "d1", size: int = 100
           ) -> InstanceRecord:
    return InstanceRecord(STUDY, SERIES, uid, SERIES.sop_class_uid, "1.2.840.10008.1.2.1", "7",
                          f"s/{uid}.dcm", size, association, digest, 1)


def association(index: InstanceIndex) -> int:
    return index.open_association(calling_ae_title="SCU", called_ae_title="NODE",
                                  address="127.0.0.1", port=104, tls=False)


def test_instances_series_and_counters(index: InstanceIndex) -> None:
    audit = association(index)
    first = index.add_instance(record("1.2.3.4.1", audit, size=100))
    second = index.add_instance(record("1.2.3.4.2", audit, size=50))
    assert first.inserted and first.arm_timer and not second.arm_timer
    assert first.series_id == second.series_id
    assert index.find_instance("1.2.3.4.1") is not None
    held = index.find_instance("1.2.3.4.2")
    assert held is not None and (held.path, held.content_digest) == ("s/1.2.3.4.2.dcm", "d1")
    assert index.find_instance("9.9") is None
    with index.engine.connect() as conn:
        series = conn.execute(select(Series)).one()
        assert (series.instance_count, series.bytes_received, series.revision,
                series.state) == (2, 150, 1, SeriesState.RECEIVING)
        assert conn.execute(select(Study.patient_id)).scalar_one() == "PID"
        stored = conn.execute(select(Association.instances_stored)).scalar_one()
        assert stored == 2
        assert conn.execute(select(Instance.association_id).where(
            Instance.sop_instance_uid == "1.2.3.4.1")).scalar_one() == audit


def test_resend_is_not_inserted_and_duplicates_count(index: InstanceIndex) -> None:
    audit = association(index)
    index.add_instance(record("1.2.3.4.1", audit, digest="first"))
    again = index.add_instance(record("1.2.3.4.1", audit, digest="second"))
    assert not again.inserted and again.held_digest == "first" and not again.arm_timer
    index.count_duplicate("1.2.3.4.1", audit)
    index.count_duplicate("1.2.3.4.1", None)
    with index.engine.connect() as conn:
        assert conn.execute(select(Instance.receive_count)).scalar_one() == 3
        row = conn.execute(select(Association.instances_stored, Association.duplicates)).one()
        assert tuple(row) == (1, 1)
        assert conn.execute(select(Series.instance_count)).scalar_one() == 1


def test_new_instance_reopens_a_complete_series(index: InstanceIndex) -> None:
    index.add_instance(record("1.2.3.4.1", None))
    with index.engine.begin() as conn:
        conn.execute(update(Series).values(state=SeriesState.COMPLETE))
    reopened = index.add_instance(record("1.2.3.4.2", None))
    assert reopened.arm_timer and reopened.inserted
    with index.engine.connect() as conn:
        series = conn.execute(select(Series)).one()
        assert (series.state, series.revision, series.completed_at,
                series.instance_count) == (SeriesState.RECEIVING, 2, None, 2)
