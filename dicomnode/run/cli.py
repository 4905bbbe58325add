"""``dicomnode process``: segment DICOM series or NIfTI files offline with the node's case runner.

Exit status: 0 every case segmented, 1 a model or case failed (reason on stderr), 2 bad
configuration or usage. Series that are not volumes (SR, secondary captures) are listed as
skipped and do not change the exit status.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dicomnode.config import load_config


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    process = subparsers.add_parser(
        "process", parents=[common],
        help="segment a folder of DICOM files (one or many series) or a NIfTI file, offline")
    process.add_argument("input", type=Path, metavar="INPUT")
    process.add_argument("--pipeline", required=True, metavar="NAME")
    process.add_argument("--out", required=True, type=Path, metavar="DIR")
    process.add_argument("--model", help="registry entry to run (default: config "
                                         "models.pipeline_models, else the pipeline's default)")
    process.add_argument("--device", help="override models.device (auto, cpu, cuda:N)")
    process.add_argument("--no-encode", action="store_true",
                         help="write only the NIfTI label map (no SEG, SR or preview)")
    process.add_argument("--workers", type=int, default=2, metavar="N",
                         help="cases in flight at once: reading and preprocessing overlap the "
                              "network pass (default 2)")
    process.add_argument("--calling-ae-title", default=None, metavar="AE",
                         help="the AE title a receiver would have seen, for the UIDs derived "
                              "when files lack a Study Instance UID (default: each file's "
                              "Source Application Entity Title, else none)")
    process.set_defaults(handler=_process)


def _process(args: argparse.Namespace) -> int:
    from dicomnode.models.pipelines import PipelineError
    from dicomnode.models.runtime import ModelError
    from dicomnode.run.batch import find_cases, process_cases
    from dicomnode.run.case import CaseRunner

    config = load_config(args.config)
    runner = CaseRunner(config.models, config.results, device=args.device)
    try:
        pipeline = runner.pipeline(args.pipeline, args.model)
        pipeline.store.require(pipeline.model)  # fail once, before reading any image
        cases, skipped = find_cases(args.input, args.calling_ae_title)
    except (ModelError, PipelineError, FileNotFoundError) as exc:
        return _fail(str(exc))
    for series in skipped:
        print(f"skipped series {series.series_instance_uid} ({series.files} file(s)): "
              f"{series.reason}")
    if not cases:
        return _fail(f"{args.input} holds no DICOM series that forms a volume and no NIfTI file")
    args.out.mkdir(parents=True, exist_ok=True)
    outcomes = process_cases(runner, cases, pipeline, args.out, encode=not args.no_encode,
                             workers=args.workers)
    done = [o for o in outcomes if o.ok]
    print(f"{len(done)} of {len(outcomes)} case(s) segmented into {args.out}")
    for outcome in outcomes:
        if not outcome.ok:
            print(f"FAILED {outcome.case.name}: {outcome.reason}", file=sys.stderr)
    return 0 if len(done) == len(outcomes) else 1
