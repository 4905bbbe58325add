"""``dicomnode serve`` and ``dicomnode status [--json]``."""

from __future__ import annotations

import argparse
import json
import sys

from dicomnode.config import load_config


def _serve(args: argparse.Namespace) -> int:
    from dicomnode.logs import configure_logging
    from dicomnode.receiver import ReceiverError
    from dicomnode.service.node import Node
    from dicomnode.storage import StorageLockedError
    from dicomnode.store import DatabaseError
    from dicomnode.web import WebError

    config = load_config(args.config)
    configure_logging(config.logging)
    try:
        Node(config).serve()
    except (ReceiverError, DatabaseError, StorageLockedError, WebError) as exc:
        print(f"dicomnode serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _status(args: argparse.Namespace) -> int:
    from dicomnode.service.status import collect_status, format_status
    from dicomnode.storage import StorageLayout
    from dicomnode.store import create_schema, make_engine

    config = load_config(args.config)
    layout = StorageLayout.of(config.storage)
    engine = make_engine(layout.database_url)
    try:
        create_schema(engine)
        status = collect_status(engine, layout)
    finally:
        engine.dispose()
    if args.json:
        json.dump(status, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_status(status))
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``serve`` and ``status`` to the ``dicomnode`` command."""
    serve = subparsers.add_parser(
        "serve", parents=[common],
        help="run the DICOM listener and series assembly until SIGTERM")
    serve.set_defaults(handler=_serve)
    status = subparsers.add_parser(
        "status", parents=[common], help="list series, jobs, associations and refusals")
    status.add_argument("--json", action="store_true",
                        help="print JSON (shape documented in the README)")
    status.set_defaults(handler=_status)
