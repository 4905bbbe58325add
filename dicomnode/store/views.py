"""The JSON of each object in the index, one definition for ``dicomnode status``, ``dicomnode
jobs`` and the console's API (``dicomnode.web``). Times are ISO 8601 UTC; no patient data."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from dicomnode.store.jobs import Delivery, DestinationHealth, Job, WorkerRecord
from dicomnode.store.models import (
    Association,
    OperatorAction,
    Rejection,
    Series,
    WebhookEvent,
    as_utc,
    utcnow,
)

Model = TypeVar("Model")


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else as_utc(moment).isoformat()


def stage_seconds(stage_times: dict[str, str] | None) -> dict[str, float]:
    """Seconds from entering each state to entering the next one (in time order)."""
    stamps = sorted((as_utc(datetime.fromisoformat(t)), s) for s, t in (stage_times or {}).items())
    return {state: round((later - moment).total_seconds(), 3)
            for (moment, state), (later, _) in zip(stamps, stamps[1:], strict=False)}


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    return {
        "destination": delivery.destination, "state": delivery.state.value,
        "attempts": delivery.attempts, "next_attempt_at": iso(delivery.next_attempt_at),
        "delivered_at": iso(delivery.delivered_at), "objects": len(delivery.stored or []),
        "error_kind": delivery.error_kind, "error_message": delivery.error_message,
        "profile": delivery.profile, "withheld": list(delivery.withheld or []),
    }


def webhook_event_json(event: WebhookEvent) -> dict[str, Any]:
    """An event on its way to a webhook, each attempt in ``history`` (not the body: it may
    hold patient data, with ``logging.include_phi``)."""
    return {
        "webhook": event.webhook, "event": event.event, "event_id": event.event_id,
        "state": event.state.value, "attempts": event.attempts,
        "created_at": iso(event.created_at), "next_attempt_at": iso(event.next_attempt_at),
        "delivered_at": iso(event.delivered_at), "error_kind": event.error_kind,
        "error_message": event.error_message, "history": list(event.history or []),
    }


def job_json(job: Job, deliveries: Iterable[Delivery],
             webhooks: Iterable[WebhookEvent] | None = None) -> dict[str, Any]:
    """A job; ``webhooks`` (its events for webhooks) is left out when not given."""
    detail = {
        "id": job.id, "series_instance_uid": job.series.series_instance_uid,
        "revision": job.revision, "state": job.state.value, "instances": job.instance_count,
        "pipeline": job.pipeline, "rule": job.rule, "priority": job.priority,
        "sender": job.sender, "attempts": job.attempts,
        # jobs.backend: celery — the dicomnode worker that claimed it (NULL: the local executor)
        "worker": job.claimed_by,
        "error_kind": job.error_kind, "error_message": job.error_message,
        "created_at": iso(job.created_at), "updated_at": iso(job.updated_at),
        "stage_times": job.stage_times, "stage_seconds": stage_seconds(job.stage_times),
        "deliveries": [delivery_json(d) for d in deliveries],
    }
    if webhooks is not None:
        detail["webhooks"] = [webhook_event_json(e) for e in webhooks]
    return detail


#: Ids in one ``IN (...)``: PostgreSQL takes at most 65,535 parameters a statement, and
#: ``dicomnode status`` passes every job.
IDS_PER_QUERY = 1000


def rows_for_jobs(session: Session, query: Select[Model],
                  job_id: InstrumentedAttribute[int], ids: Sequence[int]) -> list[Model]:
    """The rows of ``query`` whose ``job_id`` is one of ``ids``, read in lists of
    :data:`IDS_PER_QUERY` ids (each job's rows in ``query``'s order)."""
    return [row for start in range(0, len(ids), IDS_PER_QUERY)
            for row in session.scalars(query.where(job_id.in_(ids[start:start + IDS_PER_QUERY])))]


def jobs_json(session: Session, jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """:func:`job_json` of each job, their deliveries and webhook events read together."""
    ids = [j.id for j in jobs]
    deliveries: dict[int, list[Delivery]] = {}
    for delivery in rows_for_jobs(session, select(Delivery).order_by(Delivery.id),
                                  Delivery.job_id, ids):
        deliveries.setdefault(delivery.job_id, []).append(delivery)
    events: dict[int, list[WebhookEvent]] = {}
    for event in rows_for_jobs(session, select(WebhookEvent).order_by(WebhookEvent.id),
                               WebhookEvent.job_id, ids):
        events.setdefault(event.job_id, []).append(event)
    return [job_json(j, deliveries.get(j.id, []), events.get(j.id, [])) for j in jobs]


def series_json(series: Series) -> dict[str, Any]:
    return {
        "series_instance_uid": series.series_instance_uid,
        "study_instance_uid": series.study.study_instance_uid,
        "uid_synthesized": series.uid_synthesized,
        "modality": series.modality, "series_description": series.series_description,
        "series_number": series.series_number, "is_image": series.is_image,
        "instances": series.instance_count, "state": series.state.value,
        "revision": series.revision,
        "first_received_at": iso(series.first_received_at),
        "last_received_at": iso(series.last_received_at),
        "completed_at": iso(series.completed_at),
    }


def destination_json(name: str, health: DestinationHealth | None) -> dict[str, Any]:
    """The last C-ECHO of a destination (``reachable`` None: not checked yet)."""
    if health is None:
        return {"name": name, "reachable": None, "detail": "not checked yet", "checked_at": None}
    return {"name": name, "reachable": health.reachable, "detail": health.detail,
            "checked_at": iso(health.checked_at)}


def association_json(a: Association) -> dict[str, Any]:
    return {
        "id": a.id, "calling_ae_title": a.calling_ae_title, "called_ae_title": a.called_ae_title,
        "address": a.address, "started_at": iso(a.started_at), "ended_at": iso(a.ended_at),
        "outcome": a.outcome.value, "reason": a.reason, "detail": a.detail,
        "instances_stored": a.instances_stored, "duplicates": a.duplicates,
        "failures": a.failures,
    }


def rejection_json(r: Rejection) -> dict[str, Any]:
    return {
        "received_at": iso(r.received_at), "sop_instance_uid": r.sop_instance_uid,
        "sop_class_uid": r.sop_class_uid, "kind": r.kind, "status": f"0x{r.status:04X}",
        "message": r.message, "kept": r.quarantine_path,
    }


def operator_action_json(a: OperatorAction) -> dict[str, Any]:
    return {"id": a.id, "at": iso(a.at), "user": a.user, "address": a.address,
            "action": a.action, "target": a.target, "outcome": a.outcome, "detail": a.detail}


def _audit(session: Session, model: type[Association | Rejection],
           column: InstrumentedAttribute[Any], only: str | None, limit: int, offset: int,
           key: str, render: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Every row of ``model`` counted by ``column`` (under ``key``), the newest listed (those
    whose ``column`` is ``only``, when given)."""
    counts: dict[Any, int] = dict(
        session.execute(select(column, func.count()).group_by(column)).all())
    query = select(model).where(column == only) if only else select(model)
    rows = session.scalars(query.order_by(model.id.desc()).limit(limit).offset(offset)).all()
    return {"total": sum(counts.values()), key: {str(k): v for k, v in counts.items()},
            "recent": [render(row) for row in rows]}


def associations_json(session: Session, limit: int, offset: int = 0,
                      outcome: str | None = None) -> dict[str, Any]:
    """``{"total", "by_outcome", "recent"}``: every association counted, the newest listed
    (of ``outcome`` only, when given)."""
    return _audit(session, Association, Association.outcome, outcome, limit, offset,
                  "by_outcome", association_json)


def rejections_json(session: Session, limit: int, offset: int = 0,
                    kind: str | None = None) -> dict[str, Any]:
    """``{"total", "by_kind", "recent"}``: every refused instance counted, the newest listed
    (of ``kind`` only, when given)."""
    return _audit(session, Rejection, Rejection.kind, kind, limit, offset, "by_kind",
                  rejection_json)


#: Workers not heard from for this long are no longer listed.
WORKERS_KEPT = timedelta(days=1)


def worker_json(worker: WorkerRecord, now: datetime) -> dict[str, Any]:
    """A ``dicomnode worker`` (``jobs.backend: celery``): ``lost`` when it stopped sending
    heartbeats without a graceful stop (killed, its machine or network gone)."""
    return {"name": worker.name, "host": worker.host, "pid": worker.pid,
            "queues": worker.queues.split(","), "device": worker.device,
            "state": "lost" if worker.lost(now) else worker.state, "lost": worker.lost(now),
            "job": worker.job_id, "started_at": iso(worker.started_at),
            "heartbeat_at": iso(worker.heartbeat_at)}


def workers_json(session: Session) -> list[dict[str, Any]]:
    now = utcnow()
    return [worker_json(w, now) for w in session.scalars(
        select(WorkerRecord).where(WorkerRecord.heartbeat_at > now - WORKERS_KEPT)
        .order_by(WorkerRecord.name))]
