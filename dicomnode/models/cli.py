"""``dicomnode models list|pull|install|verify``.

Exit status: 0 success, 1 a model or case failed (reason on stderr), 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dicomnode.config import load_config
from dicomnode.models.registry import REGISTRY, ModelStore, get_entry, model_rows
from dicomnode.models.runtime import ModelError


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    models = subparsers.add_parser("models", help="list, pull, install and verify model weights")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    listing = sub.add_parser("list", parents=[common], help="the models, and which are installed")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=_list)

    pull = sub.add_parser("pull", parents=[common],
                          help="download a model from its official source")
    pull.add_argument("name", choices=sorted(REGISTRY), metavar="NAME")
    pull.add_argument("--mirror", default=None,
                      help="base URL holding the release files (default: config models.mirror, "
                           "else the official source)")
    pull.set_defaults(handler=_pull)

    install = sub.add_parser("install", parents=[common],
                             help="install a model from release zip(s) or a folder "
                                  "(air-gapped sites)")
    install.add_argument("name", choices=sorted(REGISTRY), metavar="NAME")
    install.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    install.set_defaults(handler=_install)

    verify = sub.add_parser("verify", parents=[common],
                            help="load an installed model and segment a tiny volume")
    verify.add_argument("name", choices=sorted(REGISTRY), metavar="NAME")
    verify.add_argument("--device", help="override models.device (auto, cpu, cuda:N)")
    verify.set_defaults(handler=_verify)



def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _size(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return "-"


def _list(args: argparse.Namespace) -> int:
    store = ModelStore(load_config(args.config).models.path)
    rows = model_rows(store)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("NAME", "PIPELINE", "MODALITY", "INSTALLED", "VERSION", "SIZE", "SOURCE")
    table = [header] + [(r["name"], r["pipeline"], r["modality"], "yes" if r["installed"] else "no",
                         r["version"], _size(r["size"]), r["source"]) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    print(f"\nweights directory: {store.root}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    from dicomnode.models.weights import pull

    config = load_config(args.config)
    entry = get_entry(args.name)
    mirror = config.models.mirror if args.mirror is None else args.mirror
    try:
        installed = pull(entry, ModelStore(config.models.path), mirror=mirror,
                         timeout=config.models.download_timeout)
    except ModelError as exc:
        return _fail(str(exc))
    print(f"{entry.name} {installed.version} installed in {installed.path}")
    for name, digest in installed.manifest.get("sha256", {}).items():
        print(f"  sha256 {digest}  {name}")
    return 0


def _install(args: argparse.Namespace) -> int:
    from dicomnode.models.weights import install

    config = load_config(args.config)
    try:
        installed = install(get_entry(args.name), ModelStore(config.models.path), args.paths)
    except ModelError as exc:
        return _fail(str(exc))
    print(f"{args.name} {installed.version} installed in {installed.path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from dicomnode.models.runtime import NnUNetRuntime
    from dicomnode.models.weights import verify

    config = load_config(args.config)
    try:
        installed = ModelStore(config.models.path).require(args.name)
        runtime = NnUNetRuntime.from_config(config.models, args.device)

        def report(c: Any) -> None:
            print(f"  {c.role}: {c.folder} folds {c.folds} on {runtime.device}: "
                  f"patch {c.patch_size}, spacing {c.spacing}, {c.seconds} s, "
                  f"labels {c.labels_found}"
                  + (f" [{c.note}]" if c.note else ""))

        print(f"{args.name} {installed.version} ({installed.path})")
        verify(installed, runtime, report)
    except ModelError as exc:
        return _fail(str(exc))
    print("OK")
    return 0
