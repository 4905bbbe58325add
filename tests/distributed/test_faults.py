"""Faults around the broker and serve, and a worker that cannot see the node: RabbitMQ stopped
and started again while jobs wait in it (and while serve routes a new one), serve restarted
while the workers run jobs, a worker stopped (SIGTERM) in the middle of one; every job still
done exactly once, its results in Orthanc once.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicomnode.store import create_schema, make_engine
from tests.distributed.conftest import Cluster, write_config, write_series
from tests.distributed.test_celery_cluster import SR, _results_in
from tests.orthanc import Orthanc, free_port
from tests.service.conftest import storescu

pytestmark = pytest.mark.timeout(600)


def _wait(predicate: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_broker_and_serve_restarts_lose_and_double_nothing(
        cluster: Any, orthanc: Orthanc, ct_sources: list[pydicom.Dataset], tmp_path: Path
) -> None:
    run: Cluster = cluster()
    series = []

    def send(name: str) -> None:
        series.append(write_series(tmp_path / name, ct_sources, 8))
        assert storescu(run.node.port, tmp_path / name).returncode == 0

    for i in range(3):  # no worker yet: the jobs wait in the broker
        send(f"queued{i}")
    _wait(lambda: len(run.jobs()) == 3 and all(j["published_at"] for j in run.jobs()),
          "3 jobs published")
    run.broker.stop()
    send("while-down")  # routed while the broker is away: it waits unpublished
    _wait(lambda: len(run.jobs()) == 4 and run.jobs()[3]["state"] == "routed", "4th routed")
    assert run.jobs()[3]["published_at"] is None
    run.broker.start()
    _wait(lambda: all(j["published_at"] for j in run.jobs()), "4th published after restart")

    workers = [run.add_worker("w1", ready=False), run.add_worker("w2", ready=False)]
    _wait(lambda: any(j["state"] in ("loading", "segmenting", "encoding") for j in run.jobs()),
          "a job running", timeout=180)
    run.node.stop()  # serve goes away while the workers run; they go on
    run.node.start()
    send("after-serve-restart")
    jobs = run.wait_jobs(5)
    assert [j["state"] for j in jobs] == ["done"] * 5, jobs
    assert all(j["attempts"] == 1 for j in jobs), jobs
    claims = run.claims()
    assert sorted(claims) == [j["id"] for j in jobs] and all(
        len(names) == 1 for names in claims.values()), claims
    kinds, segs = _results_in(orthanc)
    assert kinds[SR] == 5 and segs == Counter(series), (kinds, segs)

    # SIGTERM to a worker in the middle of a job: Celery's warm shutdown finishes it first
    send("during-stop")
    _wait(lambda: len(run.jobs()) == 6 and run.jobs()[5]["state"] in (
        "loading", "segmenting", "encoding"), "the 6th job running")
    (busy,) = [w for w in workers if w.name == run.jobs()[5]["claimed_by"]]
    assert busy.stop() == 0, busy.text()[-3000:]
    last = run.wait_jobs(6)[5]
    assert (last["state"], last["claimed_by"], last["attempts"]) == ("done", busy.name, 1), last
    assert run.claims()[last["id"]] == [busy.name]
    for worker in workers:  # recorded as stopped, not lost
        assert worker.stop() == 0, worker.text()[-3000:]
    assert {w["name"]: w["state"] for w in run.node.status()["workers"]} == {
        "w1": "stopped", "w2": "stopped"}
    kinds, segs = _results_in(orthanc)
    assert kinds[SR] == 6 and segs == Counter(series), (kinds, segs)


def _worker(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomnode.cli", "worker", "--config",
                           str(config)], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_a_worker_refuses_to_start_without_the_nodes_storage_or_database(tmp_path: Path
                                                                        ) -> None:
    node = tmp_path / "node"
    engine = make_engine(f"sqlite:///{node / 'var' / 'dicomnode.sqlite3'}")
    create_schema(engine)  # the node's database, as serve leaves it
    engine.dispose()
    (node / "var" / "spool").mkdir(parents=True)
    jobs = {"backend": "celery", "broker_url": f"amqp://127.0.0.1:{free_port()}//"}
    database = f"sqlite:///{node / 'var' / 'dicomnode.sqlite3'}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # the database is the node's, the storage folder is not mounted here
    config = write_config(tmp_path / "unmounted.yaml", {
        "storage": {"path": str(tmp_path / "not-mounted"), "database_url": database},
        "jobs": jobs})
    refused = _worker(config, elsewhere)
    assert refused.returncode == 1, refused.stderr
    assert "cannot see the node's storage" in refused.stderr, refused.stderr
    assert "not-mounted/spool does not exist" in refused.stderr, refused.stderr

    # a database that is not there
    config = write_config(tmp_path / "nodb.yaml", {
        "storage": {"path": str(node / "var"),
                    "database_url": f"postgresql+psycopg://dicomnode@127.0.0.1:{free_port()}/x"},
        "jobs": jobs})
    refused = _worker(config, elsewhere)
    assert refused.returncode == 1 and "cannot reach the node's database" in refused.stderr, \
        refused.stderr

    # the local executor: serve runs the jobs itself
    config = write_config(tmp_path / "local.yaml", {
        "storage": {"path": str(node / "var")}})
    refused = _worker(config, elsewhere)
    assert refused.returncode == 1 and "jobs.backend is 'local'" in refused.stderr, \
        refused.stderr
