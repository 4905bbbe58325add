"""``dicomnode viewer install|configure|start|stop|status``: the local Orthanc + OHIF.

The stack's Orthanc is the configuration's ``pacs`` destination (or ``--destination``): its AE
title and port are read from there, so the node and its PACS cannot disagree.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path

from dicomnode.config import load_config
from dicomnode.storage import StorageLayout
from dicomnode.viewer.stack import OHIF_PACKAGE, ViewerStack, ViewerStackError, install_ohif

_LOCAL_NAMES = {"localhost", ""}


def _is_local(host: str) -> bool:
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def stack_from_args(args: argparse.Namespace) -> ViewerStack:
    """The stack ``args`` describe: the folder under the storage path, ports from the
    destination it plays."""
    config = load_config(args.config)
    folder = args.folder or StorageLayout.of(config.storage).viewer
    destination = config.destinations.get(args.destination)
    if destination is None or destination.type != "dicom" or destination.port is None:
        raise ViewerStackError(f"destinations.{args.destination} is not a DICOM destination "
                               "with a port: the local Orthanc plays that destination")
    if not _is_local(destination.host or ""):
        raise ViewerStackError(
            f"destinations.{args.destination} is at {destination.host}, not on this machine: "
            "the local viewer stack is for a PACS on 127.0.0.1 (setup.sh --no-viewer skips it)")
    return ViewerStack(folder=folder, ohif_dist=args.ohif_dist or folder / "ohif",
                       host=args.host, viewer_port=args.port, dicom_port=destination.port,
                       http_port=args.orthanc_http_port,
                       ae_title=destination.ae_title or "ORTHANC")


def _run(args: argparse.Namespace) -> int:
    try:
        stack = stack_from_args(args)
        if args.viewer_command == "install":
            install_ohif(stack.ohif_dist)
            print(f"{OHIF_PACKAGE} installed at {stack.ohif_dist}")
        elif args.viewer_command == "configure":
            stack.configure()
            print(f"configuration written to {stack.folder}")
        elif args.viewer_command == "start":
            stack.start()
            print(f"Orthanc (AE {stack.ae_title}, DICOM port {stack.dicom_port}, REST "
                  f"{stack.orthanc_url}) and OHIF at {stack.url}/ are running")
        elif args.viewer_command == "stop":
            stack.stop()
            print("viewer stack stopped")
        else:
            state = stack.status()
            print(json.dumps({"folder": str(stack.folder), "viewer_url": stack.url,
                              "orthanc_url": stack.orthanc_url, "pids": state}, indent=2))
            return 0 if all(state.values()) else 3
    except ViewerStackError as exc:
        print(f"viewer: {exc}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    viewer = subparsers.add_parser("viewer", help="the local Orthanc + OHIF viewer stack")
    sub = viewer.add_subparsers(dest="viewer_command", required=True)
    for name, text in (("install", f"download {OHIF_PACKAGE}'s built dist/ (npm pack)"),
                       ("configure", "write Orthanc's and nginx's configuration"),
                       ("start", "configure, then start Orthanc and OHIF in the background"),
                       ("stop", "stop them"),
                       ("status", "which parts run (exit 3 if one does not)")):
        cmd = sub.add_parser(name, parents=[common], help=text)
        cmd.add_argument("--folder", type=Path, default=None,
                         help="the stack's folder (default: <storage.path>/viewer)")
        cmd.add_argument("--ohif-dist", type=Path, default=None,
                         help="OHIF's dist/ (default: <folder>/ohif)")
        cmd.add_argument("--destination", default="pacs",
                         help="the destination the local Orthanc plays (default: pacs)")
        cmd.add_argument("--host", default="127.0.0.1", help="address OHIF listens on")
        cmd.add_argument("--port", type=int, default=3000, help="OHIF's port (default 3000)")
        cmd.add_argument("--orthanc-http-port", type=int, default=8042,
                         help="Orthanc's REST/DICOMweb port (default 8042)")
        cmd.set_defaults(handler=_run)
