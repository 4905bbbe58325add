"""The ``dicomnode`` command line.

Each stage contributes its own sub-commands through a ``register(subparsers, common)`` function
in its ``cli`` module (listed in :data:`_COMMAND_MODULES`); handlers import heavy libraries
(torch, nnunetv2) only when they run, so ``dicomnode status`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dicomnode.config import ConfigError, load_config

#: Modules with a ``register(subparsers, common)`` function, in help order.
_COMMAND_MODULES = (
    "dicomnode.service.cli",   # serve, status
    "dicomnode.models.cli",    # models
    "dicomnode.run.cli",       # process
    "dicomnode.rules.cli",     # rules test
    "dicomnode.jobs.cli",      # jobs list|show|retry|cancel
    "dicomnode.distributed.cli",  # worker (jobs.backend: celery)
    "dicomnode.viewer.cli",    # viewer install|configure|start|stop|status
    "dicomnode.web.cli",       # users add|list
    "dicomnode.forward.cli",   # deid lookup
)

Handler = Callable[[argparse.Namespace], int]


def _config_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        where = exc.path or args.config or "config"
        print(f"{where}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    print(f"configuration OK (storage at {config.storage.path}, "
          f"AE {config.node.ae_title} on {config.node.host}:{config.node.port})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the sub-command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="configuration file (default: $DICOMNODE_CONFIG or the bundled "
                             "config.yaml)")
    parser = argparse.ArgumentParser(prog="dicomnode", parents=[common],
                                     description="A DICOM node that segments the spine.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    config_parser = subparsers.add_parser("config", help="inspect the configuration")
    config_sub = config_parser.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", parents=[common],
                                  help="validate config.yaml and list every problem")
    check.set_defaults(handler=_config_check)

    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
