"""``python -m dicomnode.service serve|status``: the service commands without the rest of the CLI
(useful where model dependencies are not installed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dicomnode.config import ConfigError
from dicomnode.service.cli import register


def main() -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None)
    parser = argparse.ArgumentParser(prog="python -m dicomnode.service", parents=[common])
    register(parser.add_subparsers(dest="command", required=True), common)
    args = parser.parse_args()
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
