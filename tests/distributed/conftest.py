"""A node spread over processes, with real parts only: RabbitMQ and PostgreSQL started by the
suite on free loopback ports, Orthanc as the PACS, one ``dicomnode serve`` with
``jobs.backend: celery`` and ``dicomnode worker`` processes running a VertebralBodiesCT-shaped
nnU-Net with random weights on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.store import Job, JobState, Series, SeriesState, Study, utcnow
from tests.e2e.conftest import model_store, node_config, orthanc  # noqa: F401 - shared fixtures
from tests.e2e.test_end_to_end import _ordered, _write_series
from tests.orthanc import ORTHANC, Orthanc
from tests.postgres import PG_BIN, Postgres, new_database
from tests.rabbitmq import RabbitMQ, require_rabbitmq
from tests.service.conftest import (  # noqa: F401 - shared fixtures
    RunningNode,
    ct_sources,
    free_port,
)

#: Seconds a worker's claim holds without a heartbeat: short, so a killed worker's job is
#: taken over within seconds.
LEASE = 6.0


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    require_rabbitmq()
    broker = RabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    broker.start()
    yield broker
    broker.remove()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    if PG_BIN is None:
        message = "PostgreSQL not installed (Debian package 'postgresql')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = Postgres(tmp_path_factory.mktemp("postgres"))
    server.start()
    yield server
    server.remove()


@dataclass
class WorkerProcess:
    """A ``dicomnode worker`` subprocess."""

    name: str
    config_path: Path
    cwd: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self, *extra: str) -> None:
        self.log = self.cwd / f"worker-{self.name}.log"
        with open(self.log, "ab") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dicomnode.cli", "worker", "--config",
                 str(self.config_path), "--name", self.name, *extra],
                stdout=handle, stderr=subprocess.STDOUT, cwd=self.cwd)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def wait_ready(self, timeout: float = 120) -> None:
        """Until Celery's consumer is up (after the worker warmed its pipelines)."""
        deadline = time.monotonic() + timeout
        while " ready." not in self.text():
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {self.name} not ready: {self.text()[-3000:]}")
            time.sleep(0.3)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 90) -> int:
        """SIGTERM (Celery's warm shutdown) and wait."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()


@dataclass
class Cluster:
    """serve + workers over one PostgreSQL database, one storage folder and one broker."""

    node: RunningNode
    broker: RabbitMQ
    workers: list[WorkerProcess] = field(default_factory=list)

    def add_worker(self, name: str, *extra: str, ready: bool = True) -> WorkerProcess:
        worker = WorkerProcess(name, self.node.config_path, self.node.root)
        self.workers.append(worker)
        worker.start(*extra)
        if ready:
            worker.wait_ready()
        return worker

    def jobs(self) -> list[dict[str, Any]]:
        columns = ("id", "state", "attempts", "claimed_by", "published_at", "error_kind",
                   "error_message")
        rows = self.node.query(f"SELECT {', '.join(columns)} FROM jobs ORDER BY id")
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def wait_jobs(self, count: int, states: tuple[str, ...] = ("done",), timeout: float = 240
                  ) -> list[dict[str, Any]]:
        """Until ``count`` jobs exist and each is in one of ``states`` (or failed/dead)."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs()
            if len(jobs) >= count and all(j["state"] in (*states, "failed", "dead")
                                          for j in jobs):
                return jobs
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs: {jobs}\n" + "\n".join(
                    f"--- {w.name}\n{w.text()[-2000:]}" for w in self.workers))
            time.sleep(0.3)

    def claims(self) -> dict[int, list[str]]:
        """job id → names of the workers whose log says they claimed it, in order."""
        import json

        claims: dict[int, list[str]] = {}
        for worker in self.workers:
            for line in worker.text().splitlines():
                if '"job.claimed"' in line:
                    record = json.loads(line[line.index("{"):])
                    claims.setdefault(int(record["job"]), []).append(worker.name)
        return claims


@pytest.fixture
def cluster(tmp_path: Path, rabbitmq: RabbitMQ, postgres: Postgres, model_store: Path,  # noqa: F811
            orthanc: Orthanc) -> Iterator[Callable[..., Cluster]]:  # noqa: F811
    """``cluster(**overrides)`` starts serve (jobs.backend: celery) on a fresh database and
    an empty broker; workers are added by the test. Everything is stopped at teardown."""
    if ORTHANC is None:
        pytest.skip("Orthanc (Debian 'orthanc') not installed")
    started: list[Cluster] = []

    def launch(**overrides: Any) -> Cluster:
        purge(rabbitmq)
        port = free_port()
        url = new_database(postgres, f"cluster_{port}")
        config = node_config(port, orthanc, model_store, **{
            "jobs": {"backend": "celery", "broker_url": rabbitmq.url, "lease_seconds": LEASE,
                     "poll_interval": 0.2},
            "storage": {"database_url": url},
            # 1 s splits a series on a loaded machine (a pause inside one storescu run)
            "assembly": {"series_timeout": 4.0}, **overrides})
        root = tmp_path / f"cluster{len(started)}"
        root.mkdir()
        node = RunningNode(root, config, port)
        one = Cluster(node, rabbitmq)
        started.append(one)
        node.start()
        return one

    yield launch
    for one in started:
        running = [w for w in one.workers if w.process is not None and w.process.poll() is None]
        for worker in running:  # all at once: each warm shutdown takes a few seconds
            assert worker.process is not None
            worker.process.send_signal(signal.SIGTERM)
        for worker in running:
            worker.stop(timeout=30)
        if one.node.process is not None and one.node.process.poll() is None:
            one.node.stop()


def purge(broker: RabbitMQ) -> None:
    """Empty the node's queues: a test never sees another's messages."""
    import amqp

    connection = amqp.Connection(f"127.0.0.1:{broker.port}")
    connection.connect()
    try:
        for queue in ("dicomnode.gpu", "dicomnode.cpu"):
            # a channel each: a missing queue (a first test) closes the channel it was asked on
            with contextlib.suppress(amqp.exceptions.NotFound):
                connection.channel().queue_purge(queue)
    finally:
        connection.close()


def write_series(folder: Path, sources: list[pydicom.Dataset], count: int, *, shrink: int = 4
                 ) -> str:
    """``count`` slices of the example CT as a new series (new UIDs), every ``shrink``-th pixel
    kept so CPU inference and encoding stay short; returns the Series Instance UID."""
    return _write_series(folder, _ordered(sources), count, shrink=shrink)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def routed_job(sessions: sessionmaker[Session], pipeline: str = "vertebral-bodies-ct",
               priority: int = 0) -> int:
    """A job in state ``routed`` on a series of its own, without instances; returns its id."""
    moment = utcnow()
    with sessions.begin() as session:
        study = Study(study_instance_uid=generate_uid(), first_received_at=moment)
        series = Series(series_instance_uid=generate_uid(), study=study,
                        state=SeriesState.COMPLETE, revision=1, instance_count=0,
                        first_received_at=moment, last_received_at=moment)
        session.add(series)
        session.flush()
        job = Job.for_series(series)
        job.pipeline, job.priority, job.destinations = pipeline, priority, []
        job.transition(JobState.ROUTED)
        session.add(job)
        session.flush()
        return job.id
