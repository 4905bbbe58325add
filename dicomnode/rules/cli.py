"""``dicomnode rules test PATH``: which rule a series on disk matches, and why."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from dicomnode.config import load_config
from dicomnode.rules.engine import route
from dicomnode.rules.facts import SeriesFacts


def _series_on_disk(path: Path) -> dict[str, list[pydicom.Dataset]]:
    """Headers under ``path`` grouped by Series Instance UID (files that are not DICOM skipped)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    groups: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for file in files:
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
        groups[str(ds.get("SeriesInstanceUID", "") or "")].append(ds)
    return dict(groups)


def _slices(datasets: list[pydicom.Dataset]) -> int:
    return sum(int(ds.get("NumberOfFrames", 1) or 1) for ds in datasets)


def _rules_test(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    series = _series_on_disk(args.path)
    if not series:
        print(f"no DICOM files under {args.path}")
        return 1
    report = []
    for uid, datasets in series.items():
        facts = SeriesFacts.from_dataset(datasets[0], slices=_slices(datasets),
                                         calling_ae_title=args.calling_ae_title)
        decision = route(config.routing, facts)
        report.append({
            "series_instance_uid": uid,
            "facts": {k: v for k, v in vars(facts).items() if k != "extra"},
            "matched_rules": [o.rule.name for o in decision.selected],
            "pipelines": [p for p, _ in decision.pipelines],
            "destinations": sorted({d for o in decision.selected for d in o.rule.destinations}),
            "explanation": [o.explain() for o in decision.outcomes],
        })
    if args.json:
        print(json.dumps(report, indent=2, default=list))
        return 0
    for item in report:
        facts = item["facts"]
        print(f"series {item['series_instance_uid'] or '(no Series Instance UID)'}: "
              f"{facts['modality']} {facts['orientation']} {facts['slices']} slices "
              f"{facts['series_description']!r}")
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
    test.add_argument("--calling-ae-title", default="", help="pretend it came from this AE")
    test.add_argument("--json", action="store_true", help="machine-readable output")
    test.set_defaults(handler=_rules_test)
