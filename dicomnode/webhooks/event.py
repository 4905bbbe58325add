"""The JSON body of a webhook event, built from the index's own views of the job and series.

::

    {"event": "job.done" | "job.failed" | "job.dead", "event_id", "occurred_at", "node",
     "job": {...as in status --json, without webhooks},
     "series": {...as in status --json},
     "reason": null | {"kind", "message"},
     "links": {"job", "series"} (the console's API; empty when web.enabled is false),
     "patient": {"patient_id", "patient_name", "accession_number"} (only with
                logging.include_phi)}
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from dicomnode.config import Config, WebhookEventName
from dicomnode.store import Delivery, Job, JobState
from dicomnode.store.views import iso, job_json, series_json

#: The job states webhooks are told about, and the event each one is.
EVENT_OF_STATE: dict[JobState, WebhookEventName] = {
    JobState.DONE: "done", JobState.FAILED: "failed", JobState.DEAD: "dead"}


def links(config: Config, job: Job) -> dict[str, str]:
    """Where the console shows the job and its series (none when the console is off)."""
    if not config.web.enabled:
        return {}
    api = f"{config.web.base_url}/api/v1"
    return {"job": f"{api}/jobs/{job.id}",
            "series": f"{api}/series/{job.series.series_instance_uid}"}


def event_payload(config: Config, job: Job, deliveries: Iterable[Delivery],
                  event: WebhookEventName, event_id: str, at: datetime) -> dict[str, Any]:
    """The body telling that ``job`` reached the state of ``event`` at ``at``."""
    series = job.series
    payload: dict[str, Any] = {
        "event": f"job.{event}", "event_id": event_id, "occurred_at": iso(at),
        "node": config.node.ae_title,
        "job": job_json(job, deliveries), "series": series_json(series),
        "reason": None if event == "done" else {"kind": job.error_kind,
                                                "message": job.error_message},
        "links": links(config, job),
    }
    if config.logging.include_phi:  # the same switch that lets them into the logs
        study = series.study
        payload["patient"] = {"patient_id": study.patient_id,
                              "patient_name": study.patient_name,
                              "accession_number": study.accession_number}
    return payload
