"""The outbox and its deliverer inside one process, over the real stages (the job tests' world:
an index on SQLite and PostgreSQL, a real Orthanc as the PACS, a stand-in case runner), and a
small HTTP receiver: done, failed and dead each write their event in the transaction that
reaches the state, and each event is POSTed, signed, with every attempt kept."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from dicomnode.store import Job, JobState, Study, WebhookEvent, WebhookState, utcnow
from dicomnode.webhooks import Outbox, WebhookDeliverer
from dicomnode.webhooks.deliverer import IDLE_WAIT
from tests.jobs.test_job_service import World, orthanc  # noqa: F401 - the Orthanc fixture
from tests.orthanc import Orthanc, free_port
from tests.webhooks.receiver import Receiver, verify

SECRET = "s3cr3t-hmac-key"
PHI = {"patient_name": "Doe^Jane", "patient_id": "PID-4711", "accession_number": "ACC-0815"}


@pytest.fixture(autouse=True)
def _hook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)


@pytest.fixture
def receiver() -> Any:
    server = Receiver().start()
    yield server
    server.stop()


def _world(tmp_path: Path, orthanc: Orthanc, database_url: str, receiver: Receiver,  # noqa: F811
           **sections: Any) -> World:
    webhooks = sections.pop("webhooks", [
        {"name": "ris", "url": receiver.url, "all_jobs": True, "secret_env": "HOOK_SECRET",
         "headers": {"Authorization": "Bearer ris-token"}, "retries": 1,
         "initial_backoff": 0.05},
        {"name": "mr-lab", "url": receiver.url, "events": ["failed"]}])
    rules = [{"name": "ct", "match": {"modality": ["CT"]}, "pipelines": ["vertebral-bodies-ct"],
              "destinations": ["pacs"]},
             {"name": "mr", "match": {"modality": ["MR"]}, "pipelines": ["totalspineseg"],
              "destinations": ["pacs"],
              "webhooks": [h["name"] for h in webhooks if not h.get("all_jobs")]}]
    return World(tmp_path, orthanc, database_url, webhooks=webhooks, routing={"rules": rules},
                 **sections)


def _events(world: World, job_id: int) -> list[WebhookEvent]:
    with world.sessions() as session:
        return list(session.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job_id)
                                    .order_by(WebhookEvent.id)))


def _with_patient(world: World, job_id: int) -> None:
    with world.sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None
        study = session.get(Study, job.series.study_id)
        assert study is not None
        study.patient_name, study.patient_id = PHI["patient_name"], PHI["patient_id"]
        study.accession_number = PHI["accession_number"]


def test_done_failed_and_dead_are_written_with_the_state_and_posted(
        tmp_path: Path, orthanc: Orthanc, database_url: str,  # noqa: F811
        receiver: Receiver) -> None:
    world = _world(tmp_path, orthanc, database_url, receiver)
    done = world.add_series()
    _with_patient(world, done)
    world.run_all()
    assert _events(world, done) == []  # dispatching is not an event
    world.stages.dispatcher.dispatch_due()
    world.processor.fail = ValueError("slice missing between 42.0 and 48.0 mm")
    failed = world.add_series(modality="MR")
    world.run_all()
    world.processor.fail = None
    world.config.destinations["pacs"].port = free_port()  # the PACS goes away
    dead = world.add_series()
    world.run_all()
    for _ in range(3):
        world.stages.dispatcher.dispatch_due(now=utcnow() + timedelta(seconds=5))
    assert [world.job(j).state for j in (done, failed, dead)] == [
        JobState.DONE, JobState.FAILED, JobState.DEAD]
    written = {j: [(e.webhook, e.event) for e in _events(world, j)] for j in (done, failed, dead)}
    assert written == {done: [("ris", "done")], failed: [("ris", "failed"), ("mr-lab", "failed")],
                       dead: [("ris", "dead")]}

    world.stages.webhooks.start()
    try:
        posts = receiver.wait_for(4, timeout=30)
    finally:
        world.stages.webhooks.stop()
    ris = {p.json["job"]["id"]: p for p in posts if "Authorization" in p.headers}
    assert sorted(ris) == sorted([done, failed, dead])
    for post in ris.values():
        assert verify(post, SECRET.encode())
        assert post.headers["Authorization"] == "Bearer ris-token"
        assert post.headers["X-Dicomnode-Event"] == post.json["event"]
        assert post.headers["Content-Type"] == "application/json"
    body = ris[failed].json
    assert body["event"] == "job.failed" and body["node"] == "DICOMNODE"
    assert body["job"]["state"] == "failed" and body["job"]["pipeline"] == "totalspineseg"
    assert body["job"]["series_instance_uid"] == body["series"]["series_instance_uid"]
    assert body["reason"] == {"kind": "value",
                              "message": "ValueError: slice missing between 42.0 and 48.0 mm"}
    assert body["links"]["job"] == f"http://127.0.0.1:8080/api/v1/jobs/{failed}"
    assert ris[done].json["reason"] is None
    assert ris[done].json["job"]["deliveries"][0]["state"] == "delivered"
    assert ris[dead].json["reason"]["kind"] == "unreachable"
    assert ris[dead].json["job"]["deliveries"][0]["state"] == "dead"
    unsigned = [p for p in posts if "Authorization" not in p.headers]
    assert [p.json["job"]["id"] for p in unsigned] == [failed]  # mr-lab: its rule's only
    assert "X-Dicomnode-Signature" not in unsigned[0].headers
    # No patient data by default, anywhere in the body.
    assert not any(value.encode() in p.body for p in posts for value in PHI.values())
    assert all("patient" not in p.json for p in posts)
    for event in _events(world, done):
        assert event.state == WebhookState.DELIVERED and event.attempts == 1
        assert event.history[0]["status"] == 200
        assert event.payload["event_id"] == event.event_id == ris[done].headers[
            "X-Dicomnode-Delivery"]


def test_patient_data_only_with_logging_include_phi(
        tmp_path: Path, orthanc: Orthanc, receiver: Receiver) -> None:  # noqa: F811
    world = _world(tmp_path, orthanc, "", receiver, logging={"include_phi": True},
                   webhooks=[{"name": "ris", "url": receiver.url, "all_jobs": True}])
    world.processor.fail = ValueError("no")
    job_id = world.add_series()
    _with_patient(world, job_id)
    world.run_all()
    (event,) = _events(world, job_id)
    assert event.payload["patient"] == PHI


def test_a_transition_rolled_back_writes_no_event_and_wakes_nobody(
        tmp_path: Path, orthanc: Orthanc, receiver: Receiver) -> None:  # noqa: F811
    world = _world(tmp_path, orthanc, "", receiver)
    job_id = world.add_series()
    woken: list[int] = []
    sessions = sessionmaker(world.sessions.kw["bind"], expire_on_commit=False)
    Outbox(world.config, on_event=lambda: woken.append(1)).watch(sessions)
    with pytest.raises(RuntimeError), sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.transition(JobState.FAILED, error_kind="x", error_message="y")
        session.flush()
        assert len(session.scalars(select(WebhookEvent)).all()) == 1  # in the flush...
        raise RuntimeError("the transaction fails")
    assert _events(world, job_id) == [] and woken == []  # ...and gone with it
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.transition(JobState.FAILED, error_kind="x", error_message="y")
    assert [e.webhook for e in _events(world, job_id)] == ["ris"] and woken == [1]


def test_failed_attempts_back_off_then_give_up(tmp_path: Path, orthanc: Orthanc,  # noqa: F811
                                               receiver: Receiver) -> None:
    receiver.status = 503
    world = _world(tmp_path, orthanc, "", receiver, webhooks=[
        {"name": "ris", "url": receiver.url, "all_jobs": True, "retries": 2,
         "initial_backoff": 30, "max_backoff": 40}])
    world.processor.fail = ValueError("no")
    job_id = world.add_series()
    world.run_all()
    hook = world.config.webhooks[0]
    deliverer = WebhookDeliverer(world.config, world.sessions)
    with httpx.Client() as client:
        # The next attempt is 30 s away: the thread would sleep its longest idle wait.
        assert deliverer.deliver_due(hook, client) == IDLE_WAIT
        (event,) = _events(world, job_id)
        assert (event.state, event.attempts, event.error_kind) == (
            WebhookState.PENDING, 1, "http-status")
        assert event.error_message == "HTTP 503 Service Unavailable: ok"
        waits = []
        for _ in range(2):
            (event,) = _events(world, job_id)
            waits.append(round((event.next_attempt_at.replace(tzinfo=None)
                                - utcnow().replace(tzinfo=None)).total_seconds()))
            with world.sessions.begin() as session:  # time passes
                row = session.get(WebhookEvent, event.id)
                assert row is not None
                row.next_attempt_at = utcnow()
            deliverer.deliver_due(hook, client)
    (event,) = _events(world, job_id)
    assert waits == [30, 40]  # doubling, capped at max_backoff
    assert (event.state, event.attempts) == (WebhookState.GIVEN_UP, 3)
    assert [a["status"] for a in event.history] == [503, 503, 503]
    assert len(receiver.received) == 3


def test_events_of_a_webhook_removed_from_the_config_are_given_up(
        tmp_path: Path, orthanc: Orthanc, receiver: Receiver) -> None:  # noqa: F811
    world = _world(tmp_path, orthanc, "", receiver, webhooks=[
        {"name": "old", "url": "http://127.0.0.1:9/gone", "all_jobs": True}])
    world.processor.fail = ValueError("no")
    job_id = world.add_series()
    world.run_all()
    world.config.webhooks[0].name = "new"  # config.yaml changed, the node restarts
    WebhookDeliverer(world.config, world.sessions).start()
    (event,) = _events(world, job_id)
    assert (event.state, event.error_kind) == (WebhookState.GIVEN_UP, "unknown-webhook")
