"""``dicomnode jobs list|show|retry|cancel``: look at and act on jobs in the job table."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import load_config
from dicomnode.dispatcher import Dispatcher
from dicomnode.jobs.control import JobControl
from dicomnode.storage import ResultsStore, StorageLayout
from dicomnode.store import Job, JobError, JobState, create_schema, make_engine
from dicomnode.store.views import jobs_json


@contextmanager
def _control(args: argparse.Namespace) -> Iterator[tuple[JobControl, sessionmaker[Session],
                                                        StorageLayout]]:
    """The people's side of the job table; it never runs pipelines (the running node does)."""
    config = load_config(args.config)
    layout = StorageLayout.of(config.storage)
    engine = make_engine(layout.database_url, fsync=config.storage.fsync)
    try:
        create_schema(engine)
        sessions = sessionmaker(engine, expire_on_commit=False)
        results = ResultsStore(layout, fsync=config.storage.fsync)
        yield JobControl(sessions, results, Dispatcher(config, sessions, results)), sessions, layout
    finally:
        engine.dispose()


def _list(args: argparse.Namespace) -> int:
    with _control(args) as (_, sessions, _layout), sessions() as session:
        query = select(Job).order_by(Job.id.desc()).limit(args.limit)
        if args.state:
            query = query.where(Job.state == args.state)
        jobs = jobs_json(session, session.scalars(query).all())
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
    with _control(args) as (_, sessions, layout), sessions() as session:
        job = session.get(Job, args.id)
        if job is None:
            print(f"there is no job {args.id}", file=sys.stderr)
            return 1
        detail = jobs_json(session, [job])[0]
        detail["results"] = str(layout.results(job.id))
    json.dump(detail, sys.stdout, indent=2)
    print()
    return 0


def _act(args: argparse.Namespace) -> int:
    with _control(args) as (control, _, _layout):
        try:
            if args.jobs_command == "retry":
                print(f"job {args.id}: {control.retry(args.id)}")
            else:
                control.cancel(args.id)
                print(f"job {args.id}: cancelled")
        except JobError as exc:
            print(str(exc), file=sys.stderr)
            return 1
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    jobs = subparsers.add_parser("jobs", help="list, show, retry or cancel jobs")
    sub = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = sub.add_parser("list", parents=[common], help="recent jobs, newest first")
    listing.add_argument("--state", choices=[s.value for s in JobState],
                         help="only jobs in this state")
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
