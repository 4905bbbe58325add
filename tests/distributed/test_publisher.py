"""serve's publisher against a real RabbitMQ: one message per routed job, on the queue its
pipeline wants (``jobs.cpu_pipelines`` → cpu, else gpu), with the rule's priority as the
message priority (higher taken first), carrying only the job id; a broker that is down leaves
jobs unpublished, to go out later, without an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import sessionmaker

from dicomnode.config import parse_config
from dicomnode.distributed import CPU_QUEUE, GPU_QUEUE, Publisher
from dicomnode.store import (
    Job,
    JobState,
    create_schema,
    make_engine,
)
from tests.distributed.conftest import purge, routed_job
from tests.orthanc import free_port
from tests.rabbitmq import RabbitMQ


@pytest.fixture
def jobs(tmp_path: Path) -> Any:
    engine = make_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}", immediate=True)
    create_schema(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    yield sessions
    engine.dispose()


def _take(broker: RabbitMQ, queue: str) -> list[tuple[int, int]]:
    """(job id, priority) of every message on ``queue``, in the order a worker gets them."""
    import amqp

    connection = amqp.Connection(f"127.0.0.1:{broker.port}")
    connection.connect()
    taken = []
    try:
        channel = connection.channel()
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            args, kwargs, _ = json.loads(message.body)
            assert kwargs == {} and len(args) == 1  # only the job id travels
            taken.append((args[0], message.properties["priority"]))
    finally:
        connection.close()
    return taken


def test_routed_jobs_go_once_to_their_queue_highest_priority_first(
        rabbitmq: RabbitMQ, jobs: Any, tmp_path: Path) -> None:
    purge(rabbitmq)
    config = parse_config({"jobs": {"backend": "celery", "broker_url": rabbitmq.url,
                                    "cpu_pipelines": ["totalspineseg"]}},
                          tmp_path / "config.yaml")
    low = routed_job(jobs, "vertebral-bodies-ct", 0)
    high = routed_job(jobs, "vertebral-bodies-ct", 5)
    huge = routed_job(jobs, "vertebral-bodies-ct", 50)  # clamped to the broker's 0..9
    small = routed_job(jobs, "totalspineseg", 1)
    publisher = Publisher(config, jobs)
    try:
        assert publisher.publish() == 4
        assert publisher.publish() == 0  # each job once
    finally:
        publisher.close()
    with jobs() as session:
        assert all(j.published_at is not None for j in session.query(Job))
    assert _take(rabbitmq, GPU_QUEUE) == [(huge, 9), (high, 5), (low, 0)]
    assert _take(rabbitmq, CPU_QUEUE) == [(small, 1)]
    # serve restarted: what still waits goes out again (the claim drops the repeat)
    publisher = Publisher(config, jobs)
    try:
        assert publisher.republish_waiting() == 4 and publisher.publish() == 4
    finally:
        publisher.close()
    assert [job for job, _ in _take(rabbitmq, GPU_QUEUE)] == [huge, high, low]


def test_a_broker_that_is_down_leaves_jobs_to_publish_later(jobs: Any, tmp_path: Path) -> None:
    config = parse_config({"jobs": {"backend": "celery",
                                    "broker_url": f"amqp://127.0.0.1:{free_port()}//"}},
                          tmp_path / "config.yaml")
    job_id = routed_job(jobs, "vertebral-bodies-ct", 0)
    publisher = Publisher(config, jobs)
    try:
        assert publisher.publish() == 0
    finally:
        publisher.close()
    with jobs() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.published_at is None and job.state == JobState.ROUTED
