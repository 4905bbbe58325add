"""``dicomnode rules test PATH``: which rule a series on disk matches, and why."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dicomnode.config import load_config
from dicomnode.grouping import SeriesKind, group_files
from dicomnode.rules.engine import route
from dicomnode.rules.facts import SeriesFacts


def _rules_test(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    path: Path = args.path
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    groups, _ = group_files(files, args.calling_ae_title)
    if not groups:
        print(f"no DICOM files under {args.path}")
        return 1
    report: list[dict[str, Any]] = []
    for group in groups:
        facts = SeriesFacts.from_dataset(group.first_header, slices=group.frames,
                                         calling_ae_title=group.calling_ae_title)
        routable = group.kind is SeriesKind.VOLUME
        decision = route(config.routing, facts).as_json(volume=routable)
        report.append({
            "series_instance_uid": group.series.series_instance_uid,
            "study_instance_uid": group.study.study_instance_uid,
            "uid_synthesized": group.series.uid_synthesized,
            "files": len(group.paths),
            "kind": group.kind.value,
            "facts": {k: v for k, v in vars(facts).items() if k != "extra"},
            **decision,
        })
    if args.json:
        print(json.dumps(report, indent=2, default=list))
        return 0
    for item in report:
        shown = item["facts"]
        print(f"series {item['series_instance_uid'] or '(no Series Instance UID)'}: "
              f"{shown['modality']} {shown['orientation']} {shown['slices']} slices "
              f"{shown['series_description']!r}")
        if item["forward"]:
            print(f"  → forwarded to {', '.join(item['forward'])}")
        if item["kind"] != SeriesKind.VOLUME:
            print(f"  → not segmented: {item['kind']}")
            continue
        print("  → " + (", ".join(item["matched_rules"]) or "no rule matches: not processed"))
        for text in item["explanation"]:
            print("    " + text.replace("\n", "\n    "))
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    rules = subparsers.add_parser("rules", help="routing rules")
    sub = rules.add_subparsers(dest="rules_command", required=True)
    test = sub.add_parser("test", parents=[common],
                          help="tell which rule each series under PATH matches and why")
    test.add_argument("path", type=Path, help="a DICOM file or a folder of them")
    test.add_argument("--calling-ae-title", default=None,
                      help="pretend it came from this AE (default: each file's Source "
                           "Application Entity Title, else none)")
    test.add_argument("--json", action="store_true", help="machine-readable output")
    test.set_defaults(handler=_rules_test)
