"""What the metrics read from the index: a handful of aggregates, one snapshot per scrape.

Every count is a ``GROUP BY`` aggregate over one table, all of them in one ``UNION ALL``
statement; the stage durations need each routed job's ``stage_times`` (one narrow column read;
the durations are computed here exactly as ``dicomnode status`` computes them,
:func:`dicomnode.store.views.stage_seconds`), and the destinations' last C-ECHO is a third
statement. All run in one read transaction, so one scrape sees one state of the index (WAL
snapshot on SQLite, REPEATABLE READ on PostgreSQL).

Which rows make which number, and why they only grow:

- instances stored: ``SUM(series.instance_count)``. Each newly indexed instance adds one in the
  transaction that inserts it (receiver and start-up recovery alike); retention deletes
  ``instances`` rows but never ``series`` rows, so this stays exact after a purge, where
  ``COUNT(instances)`` would fall.
- bytes stored: ``SUM(series.bytes_received)``, added to in the same update as the count.
- duplicates: ``SUM(associations.duplicates)`` (a resend adds one in its association's row).
- conflicts and refusals: ``rejections`` rows by ``kind`` (one per refused C-STORE, and one per
  refused presentation context); rows are never deleted.
- associations: ``associations`` rows by outcome and reason; a row's outcome and reason never
  change once it left ``open``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    Engine,
    Select,
    String,
    cast,
    func,
    literal_column,
    null,
    select,
    type_coerce,
    union_all,
)
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
    #: bytes of every instance ever stored
    bytes_received: int = 0
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


def _grouped(name: str, table: type[Any],
             keys: list[ColumnElement[Any] | QueryableAttribute[Any]],
             summed: QueryableAttribute[int] | QueryableAttribute[int | None] | None = None
             ) -> Select[Any]:
    """``(name, key, key, rows, SUM(summed))`` of ``table`` grouped by up to two ``keys``,
    padded with NULLs, so that every aggregate fits one ``UNION ALL``."""
    padding = [cast(null(), String)] * (2 - len(keys))
    total = func.coalesce(func.sum(summed), 0) if summed is not None else literal_column("0")
    return (select(literal_column(f"'{name}'"), *keys, *padding, func.count(), total)
            .select_from(table).group_by(*keys))


def _counts() -> CompoundSelect[Any]:
    """Every count of the snapshot in one statement (one round trip, one plan)."""
    return union_all(
        _grouped("series", Series, [_text(Series.state)], Series.instance_count),
        _grouped("instances", Instance, [], Instance.size),
        _grouped("received", Series, [], Series.bytes_received),
        _grouped("associations", Association,
                 [_text(Association.outcome), Association.reason], Association.duplicates),
        _grouped("rejections", Rejection, [Rejection.kind]),
        _grouped("jobs", Job, [_text(Job.state), Job.pipeline]),
        _grouped("deliveries", Delivery, [Delivery.destination, _text(Delivery.state)],
                 Delivery.attempts))


def read_index(engine: Engine, stages: tuple[str, ...]) -> IndexSnapshot:
    """One consistent snapshot of the aggregates; ``stages`` are the job states whose
    durations are collected."""
    connection = engine.connect()
    if connection.dialect.name == "postgresql":
        connection = connection.execution_options(isolation_level="REPEATABLE READ")
    with connection as conn, conn.begin():
        return _read(conn, stages)


def _read(conn: Connection, stages: tuple[str, ...]) -> IndexSnapshot:
    # name → (key, key) → (rows, sum); NULL keys (no reason, no pipeline) read as ""
    counts: defaultdict[str, dict[tuple[str, str], tuple[int, int]]] = defaultdict(dict)
    for name, first, second, rows, total in conn.execute(_counts()):
        key = (str(first or ""), str(second or ""))
        before = counts[name].get(key, (0, 0))
        counts[name][key] = (before[0] + int(rows), before[1] + int(total))
    associations = counts["associations"]
    held, size = counts["instances"].get(("", ""), (0, 0))
    return IndexSnapshot(
        series={state: value for (state, _), value in counts["series"].items()},
        instances_held=held, bytes_held=size,
        bytes_received=counts["received"].get(("", ""), (0, 0))[1],
        associations={key: rows for key, (rows, _) in associations.items()},
        duplicates=sum(duplicates for _, duplicates in associations.values()),
        rejections={kind: rows for (kind, _), (rows, _) in counts["rejections"].items()},
        jobs={key: rows for key, (rows, _) in counts["jobs"].items()},
        stage_seconds=_stage_seconds(conn, set(stages)),
        deliveries=counts["deliveries"],
        destinations=[DestinationCheck(str(destination), bool(reachable), as_utc(checked_at))
                      for destination, reachable, checked_at in conn.execute(
                          select(DestinationHealth.destination, DestinationHealth.reachable,
                                 DestinationHealth.checked_at)
                          .order_by(DestinationHealth.destination))])


def _stage_seconds(conn: Connection, wanted: set[str]) -> dict[tuple[str, str], list[float]]:
    """(pipeline, stage) → the seconds each routed job spent in that stage."""
    found: dict[tuple[str, str], list[float]] = {}
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
                found.setdefault((str(pipeline), stage), []).append(value)
    return found
