"""Webhooks of a real ``dicomnode serve`` fed by dcmtk's storescu, told through small HTTP
receivers started by the test: the CT job fails (no weights are installed) and its event goes
to a receiver that is up, one that is down at first and comes back, and one that never answers
within the timeout; a node killed before delivery delivers after its restart. Every attempt is
read back from the console's API and ``dicomnode status --json``."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from tests.service.conftest import (
    RunningNode,
    _cli,
    free_port,
    running_nodes,
    storescu,
    write_ct_series,
)
from tests.web.conftest import wait_for_port, web_config
from tests.web.test_api import poll
from tests.webhooks.receiver import Receiver, verify

SECRET = b"a-key-only-the-node-and-the-ris-know"
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-4711", "AccessionNumber": "ACC-0815"}


def send_ct_with_patient(node: RunningNode, folder: Path, sources: list[Dataset]) -> None:
    """20 CT slices of a patient with a name, ID and accession number (none may leave the node
    by default)."""
    named = [copy.deepcopy(ds) for ds in sources]
    for ds in named:
        for keyword, value in PATIENT.items():
            setattr(ds, keyword, value)
    write_ct_series(folder, 20, sources=named)
    result = storescu(node.port, folder)
    assert result.returncode == 0, result.stdout


def node_config(port: int, web_port: int, webhooks: list[dict[str, Any]],
                rule_webhooks: list[str]) -> dict[str, Any]:
    config = web_config(port, web_port)
    config["routing"]["rules"][0]["webhooks"] = rule_webhooks
    config["webhooks"] = webhooks
    return config


@dataclass
class Scene:
    node: RunningNode
    api: str
    up: Receiver
    flaky: Receiver
    silent: Receiver
    job_id: int

    def job(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.api}/jobs/{self.job_id}", timeout=30)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def hook(self, name: str) -> dict[str, Any]:
        (event,) = [w for w in self.job()["webhooks"] if w["webhook"] == name]
        return dict(event)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, ct_sources: list[Dataset]
          ) -> Iterator[Scene]:
    up, silent = Receiver().start(), Receiver(delay=30).start()
    flaky = Receiver()  # its port stays closed until the test starts it
    key = tmp_path_factory.mktemp("secret") / "ris.key"
    key.write_bytes(SECRET + b"\n")
    webhooks = [
        {"name": "ris", "url": up.url, "all_jobs": True, "secret_file": str(key),
         "headers": {"Authorization": "Bearer ris-token"}, "timeout": 5},
        {"name": "lims", "url": flaky.url, "events": ["failed"], "timeout": 2, "retries": 50,
         "initial_backoff": 0.3, "max_backoff": 0.6},
        {"name": "slow", "url": silent.url, "all_jobs": True, "timeout": 0.5, "retries": 2,
         "initial_backoff": 0.2, "max_backoff": 0.2},
    ]
    try:
        with running_nodes(tmp_path_factory.mktemp("webhooks")) as launch:
            port, web_port = free_port(), free_port()
            node = launch(node_config(port, web_port, webhooks, ["lims"]), port)
            wait_for_port(web_port, node)
            api = f"http://127.0.0.1:{web_port}/api/v1"
            send_ct_with_patient(node, tmp_path_factory.mktemp("ct"), ct_sources)
            jobs = poll(lambda: httpx.get(f"{api}/jobs", timeout=30).json()["items"],
                        lambda items: items and items[0]["state"] == "failed")
            yield Scene(node, api, up, flaky, silent, jobs[0]["id"])
    finally:
        for receiver in (up, flaky, silent):
            receiver.stop()


def test_the_event_arrives_signed_with_the_job_and_no_patient_data(scene: Scene) -> None:
    (post,) = scene.up.wait_for(1)
    body = post.json
    assert post.path == "/hooks/dicomnode"
    assert verify(post, SECRET)
    assert post.headers["Authorization"] == "Bearer ris-token"
    assert post.headers["X-Dicomnode-Event"] == "job.failed"
    assert post.headers["X-Dicomnode-Delivery"] == body["event_id"]
    job = scene.job()
    assert body["event"] == "job.failed" and body["node"] == "DICOMNODE"
    assert {k: body["job"][k] for k in ("id", "series_instance_uid", "pipeline", "state",
                                        "rule")} == {
        "id": scene.job_id, "series_instance_uid": job["series_instance_uid"],
        "pipeline": "vertebral-bodies-ct", "state": "failed", "rule": "ct"}
    assert body["reason"] == {"kind": job["error_kind"], "message": job["error_message"]}
    assert body["reason"]["kind"]
    assert body["series"]["modality"] == "CT" and body["series"]["instances"] == 20
    assert body["links"] == {"job": job["links"]["self"], "series": job["links"]["series"]}
    assert "patient" not in body
    for value in PATIENT.values():
        assert value.encode() not in post.body, value
    assert scene.hook("ris")["state"] == "delivered"


def test_a_receiver_down_at_first_gets_the_event_once_it_is_back(scene: Scene) -> None:
    down = poll(lambda: scene.hook("lims"), lambda e: e["attempts"] >= 2)
    assert down["state"] == "pending" and down["error_kind"] == "unreachable"
    assert all(a["status"] is None and a["error"] for a in down["history"])
    scene.flaky.start()
    (post,) = scene.flaky.wait_for(1, timeout=30)
    assert post.json["job"]["id"] == scene.job_id and "X-Dicomnode-Signature" not in post.headers
    back = poll(lambda: scene.hook("lims"), lambda e: e["state"] == "delivered")
    assert back["attempts"] == len(back["history"]) > down["attempts"]
    assert back["history"][-1]["status"] == 200 and back["error_kind"] is None
    assert back["event_id"] == post.json["event_id"]


def test_a_receiver_that_never_answers_is_given_up_after_its_retries(scene: Scene) -> None:
    event = poll(lambda: scene.hook("slow"), lambda e: e["state"] == "given-up", timeout=60)
    assert event["attempts"] == 3 and len(scene.silent.received) == 3
    assert event["error_kind"] == "timeout"
    for attempt in event["history"]:
        assert attempt["status"] is None
        assert attempt["error"].startswith("no answer within 0.5 s")
        assert 0.4 < attempt["seconds"] < 5


def test_attempts_show_in_the_api_and_in_status(scene: Scene) -> None:
    poll(lambda: {w["state"] for w in scene.job()["webhooks"]},
         lambda states: "pending" not in states)
    listed = scene.job()["webhooks"]
    assert [(w["webhook"], w["event"]) for w in listed] == [
        ("ris", "failed"), ("lims", "failed"), ("slow", "failed")]
    (in_status,) = [j for j in scene.node.status()["jobs"] if j["id"] == scene.job_id]
    assert in_status["webhooks"] == listed
    text = subprocess.run([*_cli(), "status", "--config", str(scene.node.config_path)],
                          capture_output=True, text=True, timeout=60, cwd=scene.node.root)
    assert "webhook ris:delivered(1)" in text.stdout and "webhook slow:given-up(3)" in text.stdout


def test_a_restart_between_the_jobs_end_and_delivery_still_delivers(
        tmp_path: Path, ct_sources: list[Dataset]) -> None:
    receiver = Receiver()  # down while the job fails
    webhooks = [{"name": "ris", "url": receiver.url, "all_jobs": True, "timeout": 2,
                 "retries": 100, "initial_backoff": 0.3, "max_backoff": 0.6}]
    with running_nodes(tmp_path) as launch:
        port = free_port()
        node = launch(node_config(port, free_port(), webhooks, []), port)
        send_ct_with_patient(node, tmp_path / "ct", ct_sources)
        status = node.wait_for(lambda s: s["jobs"] and s["jobs"][0]["webhooks"]
                               and s["jobs"][0]["webhooks"][0]["attempts"] >= 1, timeout=120)
        before = status["jobs"][0]["webhooks"][0]
        assert before["state"] == "pending" and status["jobs"][0]["state"] == "failed"
        node.kill9()  # no graceful stop: only what the index holds survives
        receiver.start()
        try:
            node.start()
            posts = receiver.wait_for(1, timeout=60)
            status = node.wait_for(lambda s: s["jobs"][0]["webhooks"][0]["state"] ==
                                   "delivered", timeout=60)
        finally:
            receiver.stop()
    assert {p.json["event_id"] for p in posts} == {before["event_id"]}
    assert posts[0].json["job"]["state"] == "failed"
    after = status["jobs"][0]["webhooks"][0]
    assert after["attempts"] > before["attempts"] and after["history"][-1]["status"] == 200
