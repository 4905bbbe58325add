"""``dicomnode jobs list|show|retry|cancel``: look at and act on jobs in the job table."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any, Iterator

from contextlib import contextmanager

from dicomnode.config import load_config


@contextmanager
def _service(args: argparse.Namespace) -> Iterator[Any]:
    from sqlalchemy.orm import sessionmaker

    from dicomnode.jobs.service import JobService
    from dicomnode.service.node import spool_root
    from dicomnode.store import create_schema, make_engine

    config = load_config(args.config)
    engine = make_engine(config.storage.resolved_database_url(), fsync=config.storage.fsync)
    try:
        create_schema(engine)
        # People's commands never run pipelines: the processor is the running node's.
        yield JobService(config, sessionmaker(engine, expire_on_commit=False),
                         spool_root(config), processor=_no_processor)
    finally:
        engine.dispose()


def _no_processor(*_: Any) -> dict[str, Any]:
    raise RuntimeError("the jobs command does not run pipelines")


def stage_seconds(stage_times: dict[str, str]) -> dict[str, float]:
    """Seconds from entering each state to entering the next one (in time order)."""
    stamps = sorted((datetime.fromisoformat(t), s) for s, t in (stage_times or {}).items())
    return {state: round((later - moment).total_seconds(), 3)
            for (moment, state), (later, _) in zip(stamps, stamps[1:])}


def describe_job(session: Any, job: Any) -> dict[str, Any]:
    from sqlalchemy import select

    from dicomnode.jobs.models import Delivery

    deliveries = session.scalars(select(Delivery).where(Delivery.job_id == job.id)).all()
    return {
        "id": job.id,
        "series_instance_uid": job.series.series_instance_uid,
        "revision": job.revision,
        "pipeline": job.pipeline,
        "rule": job.rule,
        "priority": job.priority,
        "state": job.state,
        "attempts": job.attempts,
        "error_kind": job.error_kind,
        "error_message": job.error_message,
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
        "stage_times": job.stage_times,
        "stage_seconds": stage_seconds(job.stage_times),
        "deliveries": [{
            "destination": d.destination, "state": d.state, "attempts": d.attempts,
            "next_attempt_at": d.next_attempt_at.isoformat() if d.next_attempt_at else None,
            "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
            "error_kind": d.error_kind, "error_message": d.error_message,
            "objects": len(d.stored or []),
        } for d in deliveries],
    }


def _list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from dicomnode.store.models import Job

    with _service(args) as service, service.sessions() as session:
        query = select(Job).order_by(Job.id.desc()).limit(args.limit)
        if args.state:
            query = query.where(Job.state == args.state)
        jobs = [describe_job(session, job) for job in session.scalars(query).all()]
    if args.json:
        json.dump(jobs, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'ID':>6}  {'STATE':<12} {'PIPELINE':<20} {'SERIES':<40} ERROR")
    for job in jobs:
        error = f"{job['error_kind']}: {job['error_message']}" if job["error_kind"] else ""
        print(f"{job['id']:>6}  {job['state']:<12} {job['pipeline'] or '-':<20} "
              f"{job['series_instance_uid'][:40]:<40} {error}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from dicomnode.store.models import Job

    with _service(args) as service, service.sessions() as session:
        job = session.get(Job, args.id)
        if job is None:
            print(f"there is no job {args.id}", file=sys.stderr)
            return 1
        detail = describe_job(session, job)
        detail["results"] = str(service.results_dir(job.id))
    json.dump(detail, sys.stdout, indent=2)
    print()
    return 0


def _act(args: argparse.Namespace) -> int:
    from dicomnode.jobs.service import JobError

    with _service(args) as service:
        try:
            if args.jobs_command == "retry":
                print(f"job {args.id}: {service.retry(args.id)}")
            else:
                service.cancel(args.id)
                print(f"job {args.id}: cancelled")
        except JobError as exc:
            print(str(exc), file=sys.stderr)
            return 1
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    jobs = subparsers.add_parser("jobs", help="list, show, retry or cancel jobs")
    sub = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = sub.add_parser("list", parents=[common], help="recent jobs, newest first")
    listing.add_argument("--state", help="only jobs in this state")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)
    show = sub.add_parser("show", parents=[common], help="one job with stages and deliveries")
    show.add_argument("id", type=int)
    show.set_defaults(handler=_show)
    for name, text in (("retry", "re-queue a failed, dead or cancelled job"),
                       ("cancel", "stop a job that has not finished")):
        action = sub.add_parser(name, parents=[common], help=text)
        action.add_argument("id", type=int)
        action.set_defaults(handler=_act)
