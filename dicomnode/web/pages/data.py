"""What the pages show beyond the API's lists: the overview's aggregates, deliveries by
destination and the model store. Each is a few ``GROUP BY`` or indexed queries, so a page stays
fast with tens of thousands of series in the index."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicomnode.metrics.collector import QUEUE_STATES
from dicomnode.metrics.host import gpu_memory, storage_free_bytes
from dicomnode.store import Delivery, Instance, Job, Series, SeriesState, as_utc, utcnow
from dicomnode.web.app import WebContext

#: Minutes the overview's ingest chart spans.
RATE_MINUTES = 60
#: Instance rows read at a time for it.
RATE_SLICE = 2000


def instances_per_minute(session: Session, minutes: int = RATE_MINUTES) -> list[int]:
    """Instances indexed in each of the last ``minutes`` minutes, oldest first (the current,
    partial minute last).

    ``received_at`` has no index, and the table holds every instance not yet purged: rows are
    read newest first by primary key, which grows in the order instances arrive, in slices,
    until one is older than the window, so the cost follows the last hour's instances rather
    than the table.
    """
    now = utcnow()
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    counts = [0] * minutes
    below: int | None = None
    while True:
        query = select(Instance.id, Instance.received_at).order_by(Instance.id.desc())
        if below is not None:
            query = query.where(Instance.id < below)
        rows = session.execute(query.limit(RATE_SLICE)).all()
        for _, at in rows:
            slot = int((as_utc(at) - start).total_seconds() // 60)
            if 0 <= slot < minutes:
                counts[slot] += 1
        if len(rows) < RATE_SLICE or as_utc(rows[-1][1]) < start:
            return counts
        below = rows[-1][0]


def overview(context: WebContext) -> dict[str, Any]:
    """The node at a glance (see the overview page)."""
    from dicomnode.web.api import list_destinations

    config = context.config
    with Session(context.engine) as session:
        rate = instances_per_minute(session)
        receiving = session.scalar(select(func.count()).select_from(Series).where(
            Series.state == SeriesState.RECEIVING)) or 0
        jobs = {str(state): int(count) for state, count in session.execute(
            select(Job.state, func.count()).group_by(Job.state))}
    free = storage_free_bytes(context.layout)
    return {
        "instances_per_minute": rate, "instances_last_hour": sum(rate),
        "series_receiving": int(receiving),
        "jobs": {state: jobs[state] for state in sorted(jobs, key=_flow_order)},
        "queue_depth": sum(jobs.get(state, 0) for state in QUEUE_STATES),
        "disk": {"free": free, "reserve": config.storage.min_free,
                 "below_reserve": free is not None and free < config.storage.min_free},
        "destinations": list_destinations(context)["items"],
        "device": config.models.device,
        "gpus": [vars(g) for g in gpu_memory(config.models.device)],
    }


def _flow_order(state: str) -> tuple[int, str]:
    return (QUEUE_STATES.index(state) if state in QUEUE_STATES else len(QUEUE_STATES), state)


def deliveries_by_destination(context: WebContext) -> dict[str, dict[str, int]]:
    """Deliveries by destination and state (``pending``, ``delivered``, ``dead``)."""
    with Session(context.engine) as session:
        counts: dict[str, dict[str, int]] = {}
        for destination, state, count in session.execute(
                select(Delivery.destination, Delivery.state, func.count())
                .group_by(Delivery.destination, Delivery.state)):
            counts.setdefault(str(destination), {})[str(state)] = int(count)
    return counts


def rule_models(context: WebContext) -> set[str]:
    """The models the routing rules' pipelines run (``models.pipeline_models``, else each
    pipeline's default)."""
    from dicomnode.models.pipelines import get_pipeline

    config = context.config
    pipelines = {p for rule in config.routing.rules for p in rule.pipelines}
    return {config.models.pipeline_models.get(p) or get_pipeline(p).models[0] for p in pipelines}


__all__ = ["deliveries_by_destination", "instances_per_minute", "overview", "rule_models"]
