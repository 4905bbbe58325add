"""The lease-based claim that makes the job table the source of truth for remote workers, on
SQLite and PostgreSQL: a redelivered job id is dropped while another worker's lease holds or
once the job is finished; a lost worker's job is taken over once its lease ran out; a worker
whose claim was taken over writes nothing more to the job.

A stand-in case runner writes a result file (the pipeline is not what is tested here; the
cluster tests run the real one through RabbitMQ).
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Config, parse_config
from dicomnode.jobs.stages import Stages
from dicomnode.run.case import Case, CaseStep, CaseSummary, OnStep
from dicomnode.storage import Spool, StorageLayout
from dicomnode.store import (
    Job,
    JobState,
    create_schema,
    make_engine,
    utcnow as now,
)
from dicomnode.store.jobs import WorkerRecord
from dicomnode.store.views import workers_json
from tests.distributed.conftest import routed_job


class StepRunner:
    """Writes one file; ``hold`` keeps it inside the segmenting step until released."""

    def __init__(self) -> None:
        self.hold: threading.Event | None = None
        self.inside = threading.Event()

    def run_pipeline(self, pipeline: str, case: Case, out: Path, on_step: OnStep) -> CaseSummary:
        on_step(CaseStep.SEGMENTING)
        self.inside.set()
        if self.hold is not None:
            self.hold.wait(30)
        on_step(CaseStep.ENCODING)
        (out / "result.json").write_text("{}")
        return CaseSummary({}, "test", ())


def _config(tmp_path: Path, database_url: str) -> Config:
    return parse_config({"storage": {"path": str(tmp_path / "var"), "min_free": 0,
                                     "database_url": database_url},
                         "jobs": {"backend": "celery", "lease_seconds": 30}},
                        tmp_path / "config.yaml")


@pytest.fixture
def stages(tmp_path: Path, database_url: str) -> Any:
    config = _config(tmp_path, database_url)
    layout = StorageLayout.of(config.storage)
    engine = make_engine(layout.database_url, immediate=True)
    create_schema(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    spool = Spool(layout.spool)
    spool.prepare()
    runner = StepRunner()
    built = Stages.build(config, sessions, spool, runner)
    yield built, sessions, runner
    engine.dispose()


def _job(sessions: sessionmaker[Session], job_id: int) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_a_repeated_delivery_is_dropped_while_the_lease_holds_and_once_done(stages: Any
                                                                           ) -> None:
    built, sessions, _ = stages
    job_id = routed_job(sessions)
    assert built.worker.claim(job_id, "w1", 30)
    assert not built.worker.claim(job_id, "w2", 30)  # w1 runs it
    job = _job(sessions, job_id)
    assert (job.state, job.claimed_by, job.attempts) == (JobState.LOADING, "w1", 1)
    built.worker.run_job(job_id, owner="w1")
    assert _job(sessions, job_id).state == JobState.DONE  # no destinations
    assert not built.worker.claim(job_id, "w2", 30)  # finished
    assert _job(sessions, job_id).attempts == 1


def test_a_lost_workers_job_is_queued_again_and_taken_over(stages: Any) -> None:
    built, sessions, _ = stages
    job_id = routed_job(sessions)
    assert built.worker.claim(job_id, "w1", 30)
    assert built.control.recover_lost() == 0  # the lease holds
    with sessions.begin() as session:  # w1 sent no heartbeat for longer than its lease
        session.execute(update(Job).where(Job.id == job_id)
                        .values(lease_until=now() - timedelta(seconds=1)))
    # the broker's redelivery may come before serve notices: the claim itself takes over
    assert built.worker.claim(job_id, "w2", 30)
    job = _job(sessions, job_id)
    assert (job.claimed_by, job.attempts) == ("w2", 2)
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id)
                        .values(lease_until=now() - timedelta(seconds=1)))
    assert built.control.recover_lost() == 1  # or serve queues it again, unpublished
    job = _job(sessions, job_id)
    assert (job.state, job.published_at, job.lease_until) == (JobState.ROUTED, None, None)


def test_a_worker_whose_claim_was_taken_over_writes_nothing_more(stages: Any) -> None:
    built, sessions, runner = stages
    job_id = routed_job(sessions)
    assert built.worker.claim(job_id, "w1", 30)
    runner.hold = threading.Event()
    thread = threading.Thread(target=built.worker.run_job, args=(job_id,),
                              kwargs={"owner": "w1"})
    thread.start()
    assert runner.inside.wait(10)
    with sessions.begin() as session:  # w1 was cut off long enough for its lease to run out
        session.execute(update(Job).where(Job.id == job_id)
                        .values(lease_until=now() - timedelta(seconds=1)))
    assert built.worker.claim(job_id, "w2", 30)
    runner.hold.set()
    thread.join(10)
    job = _job(sessions, job_id)
    assert (job.state, job.claimed_by) == (JobState.LOADING, "w2"), job.state  # untouched by w1


def test_a_worker_without_heartbeat_is_reported_lost(stages: Any) -> None:
    _, sessions, _ = stages
    moment = now()
    with sessions.begin() as session:
        for name, beat, state in (("alive", moment, "running"),
                                  ("gone", moment - timedelta(seconds=31), "running"),
                                  ("stopped", moment - timedelta(seconds=31), "stopped")):
            session.add(WorkerRecord(name=name, host="h", pid=1, queues="gpu,cpu",
                                     device="cpu", started_at=moment, heartbeat_at=beat,
                                     state=state, lease_seconds=30))
    with sessions() as session:
        states = {w["name"]: (w["state"], w["lost"]) for w in workers_json(session)}
    assert states == {"alive": ("running", False), "gone": ("lost", True),
                      "stopped": ("stopped", False)}
