"""The console's response times with a full index: every page and the API's main lists, against
the 200 ms target of issue 14.

Fills a fresh SQLite index (the default ``storage.database_url``) with ``--series`` series
(default 10,000) in studies of four, ``--instances`` instance rows each (default 20; the newest
series arrived within the last hour, so the overview's ingest chart has data), one job per series
in a realistic mix of end states with its stage times, a delivery per finished job (some dead),
one association per series, refusals and operator actions; one job gets real results (the SEG,
SR and preview the encoders write for the shared example CT) so its page reads an SR. Then
starts ``dicomnode serve`` on that storage (jobs off: the index stays as filled) and times
``--repeat`` GETs of each path over loopback HTTP with one keep-alive client, after one
warm-up request per path (templates compiled, the SR parsed once, as on a running node).

    .venv/bin/python benchmarks/console.py [--series 10000] [--instances 20] [--repeat 20]
                                           [--json PATH]

``--json`` writes a list of {"name", "ours", "reference", "unit", "ratio"}: per path its median
and 95th percentile in milliseconds, the reference being the 200 ms target (ratio below 1 meets
it). The console runs open (loopback, no users), so no password hash is checked per request.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ingest import free_port, wait_listening  # noqa: E402
from benchmarks.report import report  # noqa: E402

TARGET_MS = 200.0
STUDY_SIZE = 4
#: End states of the filled jobs, with their share.
JOB_MIX = (("done", 0.90), ("failed", 0.05), ("dead", 0.02), ("cancelled", 0.01),
           ("ignored", 0.02))
STAGES = ("complete", "routed", "loading", "segmenting", "encoding", "dispatching")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


def _uid(*parts: int) -> str:
    return "1.2.826.0.1.3680043.10.1138." + ".".join(map(str, parts))


def fill(database_url: str, series: int, instances: int, seed: int = 14) -> None:
    """Write the index: studies, series, instances, jobs, deliveries and the audit."""
    from sqlalchemy import insert
    from sqlalchemy.orm import Session

    from dicomnode.store import (
        Association,
        Delivery,
        Instance,
        Job,
        OperatorAction,
        Rejection,
        Series,
        Study,
        create_schema,
        make_engine,
    )

    rng = random.Random(seed)
    engine = make_engine(database_url)
    create_schema(engine)
    now = datetime.now(UTC)
    # Series i arrived (series - i) × 4 minutes ago, spread over some 28 days; the newest
    # fifteen within the last hour.
    arrived = [now - timedelta(minutes=4 * (series - i)) for i in range(series)]
    states = [state for state, share in JOB_MIX for _ in range(round(share * series))]
    states = (states + ["done"] * series)[:series]
    rng.shuffle(states)
    states[-1] = "done"  # the newest job: the one with results (see write_results)
    with Session(engine) as session, session.begin():
        session.execute(insert(Study), [
            {"id": s + 1, "study_instance_uid": _uid(1, s), "first_received_at": arrived[s * 4]}
            for s in range((series + STUDY_SIZE - 1) // STUDY_SIZE)])
        session.execute(insert(Association), [
            {"id": i + 1, "calling_ae_title": "MODALITY", "called_ae_title": "DICOMNODE",
             "address": "127.0.0.1", "started_at": arrived[i],
             "ended_at": arrived[i] + timedelta(seconds=20), "outcome": "released",
             "reason": "released", "instances_stored": instances} for i in range(series)])
        session.execute(insert(Series), [
            {"id": i + 1, "series_instance_uid": _uid(2, i), "study_id": i // STUDY_SIZE + 1,
             "modality": "CT", "series_description": f"spine {i}", "series_number": str(i % 9),
             "sop_class_uid": CT_IMAGE, "is_image": True, "state": "complete", "revision": 1,
             "instance_count": instances, "first_received_at": arrived[i],
             "last_received_at": arrived[i] + timedelta(seconds=20),
             "completed_at": arrived[i] + timedelta(seconds=25)} for i in range(series)])
        for start in range(0, series, 1000):  # instance rows in slices: bounded memory
            session.execute(insert(Instance), [
                {"sop_instance_uid": _uid(3, i, k), "series_id": i + 1, "sop_class_uid": CT_IMAGE,
                 "transfer_syntax_uid": JPEG2000_LOSSLESS, "instance_number": str(k + 1),
                 "path": f"{_uid(1, i // STUDY_SIZE)}/{_uid(2, i)}/{_uid(3, i, k)}.dcm",
                 "size": 180_000, "frames": 1, "received_at": arrived[i] + timedelta(seconds=k),
                 "association_id": i + 1}
                for i in range(start, min(series, start + 1000)) for k in range(instances)])
        jobs, deliveries = [], []
        for i, state in enumerate(states):
            at = arrived[i] + timedelta(seconds=25)
            times = {}
            for stage, seconds in zip(STAGES, (0.01, 0.5, 2.0, 40.0, 5.0, 3.0), strict=True):
                times[stage] = at.isoformat()
                at += timedelta(seconds=seconds * rng.uniform(0.5, 1.5))
                if state == "failed" and stage == "segmenting":
                    break
            times[state] = at.isoformat()
            failed = state in ("failed", "dead")
            jobs.append({
                "id": i + 1, "series_id": i + 1, "revision": 1, "state": state,
                "instance_count": instances, "created_at": arrived[i], "updated_at": at,
                "stage_times": times, "attempts": 1, "pipeline": "vertebral-bodies-ct",
                "rule": "ct", "priority": 0, "destinations": ["pacs"], "sender": "MODALITY",
                "error_kind": "unreachable" if state == "dead" else
                ("slice-missing" if failed else None),
                "error_message": "the series has a gap" if state == "failed" else None})
            if state in ("done", "dead"):
                deliveries.append({
                    "job_id": i + 1, "destination": "pacs",
                    "state": "delivered" if state == "done" else "dead",
                    "attempts": 1 if state == "done" else 10, "next_attempt_at": at,
                    "delivered_at": at if state == "done" else None,
                    "error_kind": "unreachable" if state == "dead" else None,
                    "stored": [_uid(4, i, n) for n in range(4)] if state == "done" else []})
        session.execute(insert(Job), jobs)
        session.execute(insert(Delivery), deliveries)
        session.execute(insert(Rejection), [
            {"association_id": rng.randrange(series) + 1, "received_at": arrived[-1],
             "sop_instance_uid": _uid(5, n), "sop_class_uid": CT_IMAGE,
             "kind": "pixel-data-length", "message": "Pixel Data is shorter than announced",
             "status": 0xC008} for n in range(200)])
        session.execute(insert(OperatorAction), [
            {"at": arrived[-1 - n], "user": "olga", "address": "127.0.0.1",
             "action": ("retry", "cancel", "echo")[n % 3], "target": f"job:{n + 1}",
             "outcome": "ok"} for n in range(500)])
    engine.dispose()


def write_results(folder: Path) -> None:
    """The SEG, SR and preview the encoders write for the shared example CT and its
    TotalSegmentator labels (tests/results' case), as a job's results folder holds them."""
    from converters.results import PipelineMetadata, encode_results
    from tests.results.fixtures import example_ct

    case = example_ct()
    folder.mkdir(parents=True, exist_ok=True)
    datasets = encode_results(case.source_grid, None, case.mapping,
                              PipelineMetadata("vertebral-bodies-ct", "benchmark", "1"),
                              image=case.volume, png_path=folder / "preview.png")
    for index, ds in enumerate(datasets):
        ds.save_as(folder / f"{index:02d}_{ds.Modality}.dcm", enforce_file_format=True)


def timed(client: httpx.Client, path: str, repeat: int) -> list[float]:
    """Milliseconds of ``repeat`` GETs of ``path`` after one warm-up."""
    answer = client.get(path)
    if answer.status_code != 200:
        raise RuntimeError(f"GET {path}: {answer.status_code} {answer.text[:300]}")
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = client.get(path)
        out.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
    return out


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=20, help="instance rows per series")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp:
        root = Path(tmp)
        port, web_port = free_port(), free_port()
        config = {
            "node": {"ae_title": "DICOMNODE", "host": "127.0.0.1", "port": port},
            "storage": {"path": str(root / "var"), "min_free": "1 MB"},
            "web": {"port": web_port, "viewer_url": "http://127.0.0.1:3000"},
            "jobs": {"enabled": False},
            "retention": {"keep_done_hours": 0},
            "models": {"path": str(root / "models"), "device": "cpu"},
            "routing": {"rules": [{"name": "ct", "match": {"modality": ["CT"]},
                                   "pipelines": ["vertebral-bodies-ct"],
                                   "destinations": ["pacs"]}]},
            "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS",
                                      "host": "127.0.0.1", "port": free_port()}},
            "dispatch": {"echo_interval": 0},
            "logging": {"level": "WARNING"},
        }
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        started = time.perf_counter()
        fill(f"sqlite:///{root / 'var' / 'dicomnode.sqlite3'}", args.series, args.instances)
        (root / "var").mkdir(exist_ok=True)
        with_sr = args.series  # the newest job: a done one gets the results
        write_results(root / "var" / "jobs" / f"{with_sr:08d}")
        print(f"index filled: {args.series} series, {args.series * args.instances} instances, "
              f"{args.series} jobs in {time.perf_counter() - started:.1f} s", flush=True)

        with open(root / "serve.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "dicomnode.cli", "serve", "--config",
                 str(root / "config.yaml")], cwd=root, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_listening(web_port, process)
                rows = measure(f"http://127.0.0.1:{web_port}", args.repeat, with_sr,
                               _uid(2, args.series // 2), args.series)
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
    report(rows, args.json, reference_label="target")
    missed = [row["name"] for row in rows if row["ours"] > TARGET_MS]
    if missed:
        print(f"over the {TARGET_MS:.0f} ms target: {', '.join(missed)}")
    return 0


def measure(base: str, repeat: int, job_id: int, series_uid: str, series: int
            ) -> list[dict[str, Any]]:
    last_page = max(0, series - 50)
    paths = {
        "overview": "/", "series list": "/series", "series list, last page":
            f"/series?offset={last_page}", "series page": f"/series/{series_uid}",
        "job list": "/jobs", "job list, failed": "/jobs?state=failed",
        "job list, last page": f"/jobs?offset={last_page}",
        "job page (SR read)": f"/jobs/{job_id}", "job page refresh": f"/jobs/{job_id}?part=body",
        "destinations": "/destinations", "models": "/models", "audit": "/audit",
        "API series": "/api/v1/series?limit=50", "API jobs": "/api/v1/jobs?limit=50",
        "API jobs, failed": "/api/v1/jobs?state=failed&limit=50",
        "API job": f"/api/v1/jobs/{job_id}", "API associations": "/api/v1/associations?limit=50",
        "API refusals": "/api/v1/refusals?limit=50", "API audit": "/api/v1/audit?limit=50",
    }
    rows: list[dict[str, Any]] = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for name, path in paths.items():
            times = timed(client, path, repeat)
            for figure, value in (("median", statistics.median(times)),
                                  ("p95", percentile(times, 0.95))):
                rows.append({"name": f"{name} {figure}", "ours": round(value, 1),
                             "reference": TARGET_MS, "unit": "ms", "ratio": None})
    return rows


if __name__ == "__main__":
    sys.exit(main())
