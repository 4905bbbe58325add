"""The JSON of each object in the index, one definition for ``dicomnode status``, ``dicomnode
jobs`` (and later the console and its API). Times are ISO 8601 UTC; no patient data."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from dicomnode.store.jobs import Delivery, Job
from dicomnode.store.models import as_utc


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
    }


def job_json(job: Job, deliveries: Iterable[Delivery]) -> dict[str, Any]:
    return {
        "id": job.id, "series_instance_uid": job.series.series_instance_uid,
        "revision": job.revision, "state": job.state.value, "instances": job.instance_count,
        "pipeline": job.pipeline, "rule": job.rule, "priority": job.priority,
        "sender": job.sender, "attempts": job.attempts,
        "error_kind": job.error_kind, "error_message": job.error_message,
        "created_at": iso(job.created_at), "updated_at": iso(job.updated_at),
        "stage_times": job.stage_times, "stage_seconds": stage_seconds(job.stage_times),
        "deliveries": [delivery_json(d) for d in deliveries],
    }
