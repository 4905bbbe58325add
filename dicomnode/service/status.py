"""What the node holds and where each series is, read from the index (``dicomnode status``).

The JSON shape (``dicomnode status --json``)::

    {
      "series": [{"series_instance_uid", "study_instance_uid", "uid_synthesized", "modality",
                  "series_description", "series_number", "is_image", "instances", "state",
                  "revision", "first_received_at", "last_received_at", "completed_at"}],
      "jobs": [{"id", "series_instance_uid", "revision", "state", "instances", "pipeline",
                "rule", "priority", "sender", "attempts", "error_kind", "error_message",
                "created_at", "updated_at", "stage_times", "stage_seconds",
                "deliveries": [{"destination", "state", "attempts", "next_attempt_at",
                                "delivered_at", "objects", "error_kind", "error_message",
                                "profile" (de-identification applied, or null),
                                "withheld": [{"sop", "reason"}]}],
                "webhooks": [{"webhook", "event", "event_id", "state", "attempts",
                              "created_at", "next_attempt_at", "delivered_at", "error_kind",
                              "error_message", "history": [{"at", "status", "error",
                                                            "seconds"}]}]}]
              (dicomnode.store.views.job_json, also what ``dicomnode jobs`` prints),
      "destinations": [{"name", "reachable", "detail", "checked_at"}]   (last C-ECHO of each),
      "workers": [{"name", "host", "pid", "queues", "device", "state", "lost", "job",
                   "started_at", "heartbeat_at"}]   (dicomnode worker processes, jobs.backend:
                   celery; a job's "worker" names the one that claimed it),
      "instances": <number of instances held>,
      "associations": {"total", "by_outcome": {outcome: n}, "recent": [{"id", "calling_ae_title",
                       "called_ae_title", "address", "started_at", "ended_at", "outcome",
                       "reason", "detail", "instances_stored", "duplicates", "failures"}]},
      "rejections": {"total", "by_kind": {kind: n}, "recent": [{"received_at",
                     "sop_instance_uid", "sop_class_uid", "kind", "status", "message",
                     "kept"}]},
      "quarantine": {"files", "bytes"},  "conflicts": {"files", "bytes"}   (spool folders)
    }

Times are ISO 8601 UTC. No patient names or IDs are shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, selectinload

from dicomnode.storage import StorageLayout
from dicomnode.store import AssociationOutcome, DestinationHealth, Instance, Job, Series
from dicomnode.store.views import (
    associations_json,
    destination_json,
    jobs_json,
    rejections_json,
    series_json,
    workers_json,
)

#: How many recent associations and rejections are listed.
RECENT = 20


def _folder_usage(folder: Path | None) -> dict[str, int]:
    files = size = 0
    if folder is not None and folder.is_dir():
        for path in folder.iterdir():
            try:
                size += path.stat().st_size
                files += 1
            except OSError:
                continue  # purged meanwhile
    return {"files": files, "bytes": size}


def collect_status(engine: Engine, layout: StorageLayout | None = None) -> dict[str, Any]:
    """Everything ``dicomnode status`` shows, as plain JSON-able data; ``layout`` adds what
    the spool's quarantine and conflict folders hold. Each object's JSON is the one of
    :mod:`dicomnode.store.views`, which the console's API serves too."""

    with Session(engine) as session:
        # every series' study in one more query, not one lazy load per study
        series = session.scalars(select(Series).options(selectinload(Series.study))
                                 .order_by(Series.first_received_at)).all()
        jobs = session.scalars(select(Job).order_by(Job.id)).all()
        health = session.scalars(select(DestinationHealth)).all()
        instances = session.scalar(select(func.count()).select_from(Instance)) or 0
        return {
            "series": [series_json(s) for s in series],
            "jobs": jobs_json(session, jobs),
            "destinations": [destination_json(h.destination, h) for h in health],
            "workers": workers_json(session),
            "instances": instances,
            "associations": associations_json(session, RECENT),
            "rejections": rejections_json(session, RECENT),
            "quarantine": _folder_usage(layout.quarantine if layout else None),
            "conflicts": _folder_usage(layout.conflicts if layout else None),
        }


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)


def format_status(status: dict[str, Any]) -> str:
    """A person-readable rendering of :func:`collect_status`."""
    parts = [f"Series ({len(status['series'])}, {status['instances']} instances)"]
    if status["series"]:
        parts.append(_table([[s["series_instance_uid"], s["modality"] or "",
                              (s["series_description"] or "")[:32], str(s["instances"]),
                              s["state"], str(s["revision"]), s["first_received_at"] or "",
                              s["last_received_at"] or "", s["completed_at"] or ""]
                             for s in status["series"]],
                            ["SERIES INSTANCE UID", "MOD", "DESCRIPTION", "INST", "STATE", "REV",
                             "FIRST RECEIVED", "LAST RECEIVED", "COMPLETED"]))
    parts.append(f"\nJobs ({len(status['jobs'])})")
    if status["jobs"]:
        parts.append(_table([[str(j["id"]), j["series_instance_uid"] or "", str(j["revision"]),
                              j["pipeline"] or "-",
                              j["state"] + (f" @{j['worker']}" if j.get("worker") else ""),
                              j["updated_at"] or "",
                              " ".join([f"{d['destination']}:{d['state']}({d['attempts']})"
                                        + (f"[{d['profile']}]" if d.get("profile") else "")
                                        for d in j["deliveries"]]
                                       + [f"webhook {w['webhook']}:{w['state']}({w['attempts']})"
                                          for w in j["webhooks"]]),
                              f"{j['error_kind']}: {j['error_message']}" if j["error_kind"]
                              else ""] for j in status["jobs"]],
                            ["ID", "SERIES INSTANCE UID", "REV", "PIPELINE", "STATE", "UPDATED",
                             "DELIVERIES", "ERROR"]))
    withheld = [(j["id"], d, w) for j in status["jobs"] for d in j["deliveries"]
                for w in d.get("withheld") or []]
    if withheld:
        parts.append(f"\nWithheld from de-identifying destinations ({len(withheld)})")
        parts += [f"  job {job} {d['destination']} (profile {d['profile']}): {w['sop']}: "
                  f"{w['reason']}" for job, d, w in withheld]
    if status["destinations"]:
        parts.append("\nDestinations")
        for d in status["destinations"]:
            parts.append(f"  {d['name']}: {'reachable' if d['reachable'] else 'UNREACHABLE'} "
                         f"({d['detail']}, checked {d['checked_at']})")
    if status["workers"]:
        parts.append("\nWorkers")
        for w in status["workers"]:
            job = f"job {w['job']}" if w["job"] else "idle"
            parts.append(f"  {w['name']} ({w['host']}, {w['device']}, {','.join(w['queues'])}): "
                         f"{'LOST' if w['lost'] else w['state']}, {job}, last heartbeat "
                         f"{w['heartbeat_at']}")
    assoc = status["associations"]
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(assoc["by_outcome"].items())) or "none"
    parts.append(f"\nAssociations ({assoc['total']}): {outcomes}")
    rejected = [a for a in assoc["recent"] if a["outcome"] == AssociationOutcome.REJECTED]
    for a in rejected[:5]:
        parts.append(f"  rejected {a['started_at']} {a['calling_ae_title']}@{a['address']}: "
                     f"{a['reason']}")
    rej = status["rejections"]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(rej["by_kind"].items())) or "none"
    parts.append(f"\nRefused instances ({rej['total']}): {kinds}")
    quarantine, conflicts = status["quarantine"], status["conflicts"]
    parts.append(f"  quarantine: {quarantine['files']} files, {quarantine['bytes']} bytes; "
                 f"conflicts kept: {conflicts['files']} files, {conflicts['bytes']} bytes")
    for r in rej["recent"][:5]:
        parts.append(f"  {r['received_at']} {r['status']} {r['kind']} "
                     f"{r['sop_instance_uid'] or '-'}: {r['message']}")
    return "\n".join(parts)
