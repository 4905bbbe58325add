"""What the metrics read from the index: a handful of aggregates, one snapshot per scrape.

Every number is a ``GROUP BY`` aggregate over one table, except the stage durations, which need
each job's ``stage_times`` (one narrow column read; the durations are computed here exactly as
``dicomnode status`` computes them, :func:`dicomnode.store.views.stage_seconds`). All queries run
in one read transaction, so one scrape sees one state of the index (WAL snapshot on SQLite,
REPEATABLE READ on PostgreSQL).

Which rows make which number, and why they only grow:

- instances stored: ``SUM(series.instance_count)``. Each newly indexed instance adds one in the
  transaction that inserts it (receiver and start-up recovery alike); retention deletes
  ``instances`` rows but never ``series`` rows, so this stays exact after a purge, where
  ``COUNT(instances)`` would fall.
- duplicates: ``SUM(associations.duplicates)`` (a resend adds one in its association's row).
- conflicts and refusals: ``rejections`` rows by ``kind`` (one per refused C-STORE, and one per
  refused presentation context); rows are never deleted.
- associations: ``associations`` rows by outcome and reason; a row's outcome and reason never
  change once it left ``open``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, String, func, select, type_coerce
from sqlalchemy.engine import Connection
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.elements import ColumnElement

from dicomnode.store import (
    Association,
    Delivery,
    DestinationHealth,
    Instance,
    Job,
    Rejection,
    Series,
    as_utc,
)
from dicomnode.store.views import stage_seconds

LOGGER = logging.getLogger("dicomnode.metrics")


@dataclass(frozen=True)
class DestinationCheck:
    """The last C-ECHO of a destination (``destination_health``)."""

    destination: str
    reachable: bool
    checked_at: datetime


@dataclass
class IndexSnapshot:
    """The aggregates one scrape reports. Keys are plain strings (label values); a job without
    a pipeline (not routed yet, or ignored) has pipeline ``""``."""

    #: series state → (series, instances ever stored in them)
    series: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: instance rows held now, and the sum of their file sizes
    instances_held: int = 0
    bytes_held: int = 0
    #: (outcome, reason) → associations; reason ``""`` where none is recorded (open ones)
    associations: dict[tuple[str, str], int] = field(default_factory=dict)
    duplicates: int = 0
    #: rejection kind → rows
    rejections: dict[str, int] = field(default_factory=dict)
    #: (state, pipeline) → jobs
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (pipeline, stage) → seconds each job spent in that stage (stages it has left)
    stage_seconds: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    #: (destination, state) → (deliveries, attempts made by them)
    deliveries: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    destinations: list[DestinationCheck] = field(default_factory=list)


def _text(column: QueryableAttribute[Any]) -> ColumnElement[str]:
    """A state column read as its stored string: a state a newer version wrote still reads."""
    return type_coerce(column, String)


def read_index(engine: Engine, stages: tuple[str, ...]) -> IndexSnapshot:
    """One consistent snapshot of the aggregates; ``stages`` are the job states whose
    durations are collected."""
    connection = engine.connect()
    if connection.dialect.name == "postgresql":
        connection = connection.execution_options(isolation_level="REPEATABLE READ")
    with connection as conn, conn.begin():
        return _read(conn, stages)


def _read(conn: Connection, stages: tuple[str, ...]) -> IndexSnapshot:
    snap = IndexSnapshot()
    series_state = _text(Series.state)
    for state, count, stored in conn.execute(
            select(series_state, func.count(), func.coalesce(func.sum(Series.instance_count), 0))
            .group_by(series_state)):
        snap.series[str(state)] = (int(count), int(stored))

    held, size = conn.execute(
        select(func.count(), func.coalesce(func.sum(Instance.size), 0))
        .select_from(Instance)).one()
    snap.instances_held, snap.bytes_held = int(held), int(size)

    outcome = _text(Association.outcome)
    for state, reason, count, duplicates in conn.execute(
            select(outcome, Association.reason, func.count(),
                   func.coalesce(func.sum(Association.duplicates), 0))
            .group_by(outcome, Association.reason)):
        key = (str(state), reason or "")
        snap.associations[key] = snap.associations.get(key, 0) + int(count)
        snap.duplicates += int(duplicates)

    for kind, count in conn.execute(
            select(Rejection.kind, func.count()).group_by(Rejection.kind)):
        snap.rejections[str(kind)] = int(count)

    job_state = _text(Job.state)
    for state, pipeline, count in conn.execute(
            select(job_state, Job.pipeline, func.count()).group_by(job_state, Job.pipeline)):
        key = (str(state), pipeline or "")
        snap.jobs[key] = snap.jobs.get(key, 0) + int(count)

    wanted = set(stages)
    for job_id, pipeline, times in conn.execute(
            select(Job.id, Job.pipeline, Job.stage_times).where(Job.pipeline.is_not(None))):
        try:
            seconds = stage_seconds(times)
        except (TypeError, ValueError, AttributeError):
            # every scrape would repeat a warning; `dicomnode jobs show` names the problem
            LOGGER.debug("job %s: unreadable stage_times, left out of the metrics", job_id)
            continue
        for stage, value in seconds.items():
            if stage in wanted:
                snap.stage_seconds.setdefault((str(pipeline), stage), []).append(value)

    delivery_state = _text(Delivery.state)
    for destination, state, count, attempts in conn.execute(
            select(Delivery.destination, delivery_state, func.count(),
                   func.coalesce(func.sum(Delivery.attempts), 0))
            .group_by(Delivery.destination, delivery_state)):
        snap.deliveries[(str(destination), str(state))] = (int(count), int(attempts))

    for destination, reachable, checked_at in conn.execute(
            select(DestinationHealth.destination, DestinationHealth.reachable,
                   DestinationHealth.checked_at).order_by(DestinationHealth.destination)):
        snap.destinations.append(DestinationCheck(str(destination), bool(reachable),
                                                  as_utc(checked_at)))
    return snap
