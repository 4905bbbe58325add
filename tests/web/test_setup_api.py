"""The API over what the node is set up with, against a real ``dicomnode serve``: the models
(installed, warm, ``verify`` in the node's own runtime, operators only, audited) and the rules
(the list, and a test of a series the node holds)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomnode.models.registry import REGISTRY
from tests.models.train_small_model import TRAINED_CT_MODEL
from tests.service.conftest import _cli, storescu, write_ct_series
from tests.web.conftest import METRICS_TOKEN, Console
from tests.web.test_api import poll

MODEL = "vertebral-bodies-ct-m"


def models(console: Console) -> dict[str, dict[str, Any]]:
    with console.client("victor") as client:
        answer = client.get("/api/v1/models")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["total"] == len(body["items"])
    return {m["name"]: m for m in body["items"]}


@pytest.fixture(scope="module")
def held_series(console: Console, tmp_path_factory: pytest.TempPathFactory,
                ct_sources: list[Dataset]) -> str:
    """A complete CT series the node holds."""
    folder, uid = tmp_path_factory.mktemp("ct"), generate_uid()
    write_ct_series(folder, 12, series_uid=uid, sources=ct_sources)
    result = storescu(console.node.port, folder)
    assert result.returncode == 0, result.stdout
    with console.client("victor") as client:
        poll(lambda: client.get(f"/api/v1/series/{uid}").json(),
             lambda series: series.get("state") == "complete")
    return uid


def test_models_lists_the_registry_none_installed(console: Console) -> None:
    listed = models(console)
    assert set(listed) == set(REGISTRY)
    assert not any(m["installed"] or m["warm"] for m in listed.values())
    assert listed[MODEL]["pipeline"] == "vertebral-bodies-ct" and listed[MODEL]["path"] is None


def test_verify_needs_an_operator_and_an_installed_model(console: Console) -> None:
    with console.client("victor") as viewer:
        assert viewer.post(f"/api/v1/models/{MODEL}/verify").status_code == 403
    with console.client("olga") as operator:
        unknown = operator.post("/api/v1/models/no-such-model/verify")
        missing = operator.post(f"/api/v1/models/{MODEL}/verify")
        audit = operator.get("/api/v1/audit", params={"action": "verify"}).json()["items"]
    assert unknown.status_code == 404 and "no-such-model" in unknown.json()["detail"]
    assert missing.status_code == 409, missing.text
    assert "not installed" in missing.json()["detail"]
    assert audit[0]["user"] == "olga" and audit[0]["target"] == f"model:{MODEL}"
    assert audit[0]["outcome"] == "failed"


def test_an_installed_model_verifies_and_is_then_warm(console: Console) -> None:
    install = subprocess.run([*_cli(), "models", "install", MODEL, str(TRAINED_CT_MODEL),
                              "--config", str(console.node.config_path)],
                             capture_output=True, text=True, timeout=300,
                             cwd=console.node.root)
    assert install.returncode == 0, install.stdout + install.stderr
    before = models(console)[MODEL]
    assert before["installed"] and not before["warm"] and before["path"]

    with console.client("olga") as operator:
        answer = operator.post(f"/api/v1/models/{MODEL}/verify", timeout=600)
        audit = operator.get("/api/v1/audit", params={"action": "verify"}).json()["items"]
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["device"] == "cpu"
    (component,) = body["components"]
    assert component["labels_found"] and component["seconds"] > 0
    assert body["models"][0]["warm"] is True
    # The model stays loaded in the node: its next job starts without loading it.
    assert models(console)[MODEL]["warm"] is True
    assert (audit[0]["outcome"], audit[0]["target"]) == ("ok", f"model:{MODEL}")
    with console.client() as client:
        scraped = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    warm = {s.labels["model"]: s.value for family in text_string_to_metric_families(scraped.text)
            if family.name == "dicomnode_model_warm" for s in family.samples}
    assert warm == {name: float(name == MODEL) for name in REGISTRY}


def test_rules_are_listed_in_order(console: Console) -> None:
    with console.client("victor") as client:
        body = client.get("/api/v1/rules").json()
    assert body["mode"] == "first" and body["total"] == 1
    (rule,) = body["items"]
    assert rule["name"] == "ct" and rule["pipelines"] == ["vertebral-bodies-ct"]
    assert rule["match"]["modality"] == ["CT"] and rule["destinations"] == ["self"]


def test_a_held_series_is_tested_against_the_rules(console: Console, held_series: str) -> None:
    with console.client("victor") as client:
        answer = client.post("/api/v1/rules/test",
                             params={"series_instance_uid": held_series})
        unknown = client.post("/api/v1/rules/test", params={"series_instance_uid": "1.2.3"})
        missing = client.post("/api/v1/rules/test")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["kind"] == "volume" and body["sender"] == "STORESCU"
    assert body["facts"]["modality"] == "CT" and body["facts"]["slices"] == 12
    assert body["matched_rules"] == ["ct"] and body["pipelines"] == ["vertebral-bodies-ct"]
    assert body["destinations"] == ["self"]
    (rule,) = body["rules"]
    assert rule["matched"] and all(check["passed"] for check in rule["checks"])
    assert body["explanation"][0].startswith("rule 'ct': MATCH")
    assert unknown.status_code == 404 and "1.2.3" in unknown.json()["detail"]
    assert missing.status_code == 422 and missing.json()["errors"]


def test_requeueing_dead_letters_needs_an_operator(console: Console) -> None:
    with console.client("victor") as viewer, console.client("olga") as operator:
        assert viewer.post("/api/v1/destinations/down/requeue").status_code == 403
        assert viewer.get("/api/v1/destinations/down/dead-letters").json() == {
            "total": 0, "items": []}
        answer = operator.post("/api/v1/destinations/down/requeue")
        unknown = operator.post("/api/v1/destinations/nowhere/requeue")
    assert answer.status_code == 200
    assert answer.json() == {"destination": "down", "requeued": 0, "jobs": []}
    assert unknown.status_code == 404


def test_dead_forwards_are_the_destinations_dead_letters_too(console: Console,
                                                             held_series: str) -> None:
    """A forwarded series that gave up on ``down`` (delivery ``forward:down``) is listed
    with the destination's own dead letters."""
    with console.client("victor") as client:
        job_id = client.get(f"/api/v1/series/{held_series}").json()["jobs"][0]["id"]
        console.node.query(
            "INSERT INTO deliveries (job_id, destination, state, attempts, next_attempt_at, "
            f"error_kind, error_message, stored) VALUES ({job_id}, 'forward:down', 'dead', 3, "
            "'2026-01-01 00:00:00', 'unreachable', 'cannot associate', '[]')")
        dead = client.get("/api/v1/destinations/down/dead-letters").json()
    assert dead["total"] == 1
    (letter,) = dead["items"]
    assert (letter["job_id"], letter["destination"], letter["series_instance_uid"]) == (
        job_id, "forward:down", held_series)
