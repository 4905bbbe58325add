"""``dicomnode worker [--queue gpu|cpu] [--device cuda:N] [--name NAME]``."""

from __future__ import annotations

import argparse
import sys

from dicomnode.config import load_config


def _worker(args: argparse.Namespace) -> int:
    from dicomnode.distributed.worker import RemoteWorker, WorkerStartError
    from dicomnode.logs import configure_logging

    config = load_config(args.config)
    configure_logging(config.logging)
    queues = [args.queue] if args.queue else ["gpu", "cpu"]
    worker = RemoteWorker(config, queues, args.device, args.name)
    try:
        worker.serve()
    except WorkerStartError as exc:
        print(f"dicomnode worker: {exc}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    worker = subparsers.add_parser(
        "worker", parents=[common],
        help="run jobs published by serve (jobs.backend: celery) on this machine")
    worker.add_argument("--queue", choices=["gpu", "cpu"],
                        help="take jobs of this queue only (default: both)")
    worker.add_argument("--device", help="device to run models on (cuda:N or cpu; default: "
                                         "models.device)")
    worker.add_argument("--name", help="this worker's name in status (default: host-pid)")
    worker.set_defaults(handler=_worker)
