"""serve + two ``dicomnode worker`` processes through a real RabbitMQ, on PostgreSQL, with a
real nnU-Net (random weights) and Orthanc: ten series from two senders, then a worker killed
with SIGKILL in the middle of a job; every job done exactly once. One cluster for both parts:
starting serve and two warm workers is most of the cost.

"Exactly once" is read from three places: the job table (one attempt, one worker), the
workers' own logs (one claim per job), and Orthanc (one SEG and one SR per series, no SOP
Instance UID twice).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import create_engine, text

from tests.distributed.conftest import LEASE, Cluster, WorkerProcess, write_series
from tests.e2e.conftest import orthanc_objects
from tests.orthanc import Orthanc
from tests.service.conftest import storescu

SEG, SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"

pytestmark = pytest.mark.timeout(600)


def _results_in(orthanc: Orthanc) -> tuple[Counter[str], Counter[str]]:
    """(SOP class → count, referenced series → SEG count) of what Orthanc holds."""
    objects = orthanc_objects(orthanc)
    uids = Counter(str(ds.SOPInstanceUID) for ds in objects)
    assert max(uids.values(), default=1) == 1, "an object stored twice"
    segs = Counter(str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID) for ds in objects
                   if ds.SOPClassUID == SEG)
    return Counter(str(ds.SOPClassUID) for ds in objects), segs


def _send(port: int, folders: list[Path], calling: str) -> None:
    for folder in folders:
        sent = storescu(port, folder, calling=calling)
        assert sent.returncode == 0, sent.stdout


def _freeze_claimer(run: Cluster, workers: dict[str, WorkerProcess], job_id: int
                    ) -> tuple[str, str]:
    """SIGSTOP the worker the moment it has claimed ``job_id`` (polled every 10 ms on one
    open connection), so that it is caught holding the job however fast the job runs (on a
    quiet CI machine the small model's whole job fitted between two slower polls). Returns
    the worker's name and the job's state when it was stopped: any state before
    dispatching (claimed, loading, segmenting or encoding)."""
    engine = create_engine(run.node.database_url)
    query = text("SELECT state, claimed_by FROM jobs WHERE id = :id")
    deadline = time.monotonic() + 120
    try:
        with engine.connect() as conn:
            while True:
                row = conn.execute(query, {"id": job_id}).first()
                conn.rollback()  # a fresh snapshot on the next poll
                if row is not None and row[1]:
                    os.kill(workers[row[1]].pid, signal.SIGSTOP)
                    state = conn.execute(query, {"id": job_id}).one()[0]
                    assert state not in ("dispatching", "done", "failed", "dead"), \
                        f"job {job_id} was {state} when its worker was stopped"
                    return str(row[1]), str(state)
                assert time.monotonic() < deadline, f"job {job_id} not claimed: {run.jobs()}"
                time.sleep(0.01)
    finally:
        engine.dispose()


def test_ten_series_done_once_by_two_workers_then_a_killed_workers_job_once_by_the_other(
        cluster: Any, orthanc: Orthanc, ct_sources: list[pydicom.Dataset], tmp_path: Path
) -> None:
    run: Cluster = cluster()
    workers = {"w1": run.add_worker("w1", ready=False), "w2": run.add_worker("w2", ready=False)}
    for worker in workers.values():
        worker.wait_ready()
    folders = [tmp_path / f"series{i}" for i in range(10)]
    series = [write_series(folder, ct_sources, 8) for folder in folders]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two senders at once
        for future in [pool.submit(_send, run.node.port, folders[0::2], "SENDER_A"),
                       pool.submit(_send, run.node.port, folders[1::2], "SENDER_B")]:
            future.result()
    jobs = run.wait_jobs(10)
    elapsed = time.monotonic() - started
    assert [j["state"] for j in jobs] == ["done"] * 10, jobs
    assert all(j["attempts"] == 1 for j in jobs), jobs
    ran_by = Counter(j["claimed_by"] for j in jobs)
    assert set(ran_by) == {"w1", "w2"}, ran_by  # both took jobs (prefetch 1)
    claims = run.claims()
    # each job ran at jobs.nice (the default 10): a worker beside serve yields to receiving
    assert all('"nice": 10' in line for w in run.workers for line in w.text().splitlines()
               if '"job.claimed"' in line)
    assert sorted(claims) == [j["id"] for j in jobs] and all(
        len(names) == 1 for names in claims.values()), claims
    kinds, segs = _results_in(orthanc)
    assert kinds[SR] == 10 and segs == Counter(series), (kinds, segs)
    # status names the workers and their heartbeats, and which worker ran each job
    status = run.node.status()
    listed = {w["name"]: w for w in status["workers"]}
    assert set(listed) == {"w1", "w2"} and all(not w["lost"] for w in listed.values())
    assert {j["id"]: j["worker"] for j in status["jobs"]} == {
        j["id"]: j["claimed_by"] for j in jobs}
    # and so does the console's API
    api = f"http://127.0.0.1:{run.node.config['web']['port']}/api/v1/workers"
    with urllib.request.urlopen(api, timeout=30) as answer:
        assert {w["name"] for w in json.load(answer)["items"]} == {"w1", "w2"}
    stages: Counter[str] = Counter()
    for job in status["jobs"]:
        stages.update(job["stage_seconds"])
    print(f"10 series, 2 workers: {elapsed:.1f} s; jobs per worker {dict(ran_by)}; seconds "
          f"per stage, all jobs: { {k: round(v, 1) for k, v in stages.items()} }")

    # kill -9 of the worker that holds a job (stopped as soon as it claimed it, then killed);
    # the job is delivered again and finished by the other, once
    big = write_series(tmp_path / "big", ct_sources, 20, shrink=1)
    assert storescu(run.node.port, tmp_path / "big").returncode == 0
    victim, killed_in = _freeze_claimer(run, workers, job_id=11)
    workers[victim].kill9()
    other = "w2" if victim == "w1" else "w1"
    job = run.wait_jobs(11, timeout=120 + LEASE)[-1]
    assert job["state"] == "done", job
    assert job["claimed_by"] == other and job["attempts"] == 2, job
    # one claim each (attempts 2); the victim may have been stopped before it logged its own
    claimed = run.claims()[job["id"]]
    assert claimed.count(other) == 1 and claimed.count(victim) <= 1, claimed
    kinds, segs = _results_in(orthanc)  # no object twice, one SEG series per input series
    assert segs == Counter([*series, big]) and kinds[SR] == 11, kinds
    study = pydicom.dcmread(next((tmp_path / "big").iterdir())).StudyInstanceUID
    stored = {str(ds.SOPInstanceUID) for ds in orthanc_objects(orthanc)
              if ds.StudyInstanceUID == study}  # SEG, SR and preview (results only)
    results = run.node.root / "var" / "jobs" / f"{job['id']:08d}"
    written = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
               for p in results.glob("*.dcm")}
    assert written and written == stored, (written, stored)
    lost = {w["name"]: w["lost"] for w in run.node.status()["workers"]}
    assert lost == {victim: True, other: False}, lost
    print(f"killed {victim} while {killed_in}; {other} finished the job")
