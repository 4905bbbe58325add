"""The console's REST API against a real ``dicomnode serve``: every endpoint, who may call it,
errors as JSON, and the same JSON as ``dicomnode status --json``."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from tests.service.conftest import echoscu, storescu, write_ct_series, write_short_pixel_data
from tests.web.conftest import METRICS_TOKEN, Console

# Every test twice: the index in SQLite, then in a real PostgreSQL (the console's queries, date
# filters and writes of the audit on both engines).
pytestmark = pytest.mark.parametrize("console", ["sqlite", "postgresql"], indirect=True,
                                     scope="module")

READS = ["/api/v1/me", "/api/v1/series", "/api/v1/jobs", "/api/v1/destinations",
         "/api/v1/associations", "/api/v1/refusals", "/api/v1/audit"]


def poll(read: Callable[[], Any], until: Callable[[Any], bool], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    value = read()
    while not until(value):
        assert time.monotonic() < deadline, value
        time.sleep(0.3)
        value = read()
    return value


@pytest.fixture(scope="module")
def failed_job(console: Console, tmp_path_factory: pytest.TempPathFactory,
               ct_sources: list[Dataset]) -> dict[str, Any]:
    """A CT series sent to the node, and its job, failed: no weights are installed."""
    folder = tmp_path_factory.mktemp("ct")
    write_ct_series(folder, 20, sources=ct_sources)
    result = storescu(console.node.port, folder)
    assert result.returncode == 0, result.stdout
    with console.client("victor") as client:
        jobs = poll(lambda: client.get("/api/v1/jobs").json()["items"],
                    lambda items: items and items[0]["state"] == "failed")
    return dict(jobs[0])


def test_openapi_and_docs_are_served(console: Console) -> None:
    with console.client() as client:
        schema = client.get("/openapi.json").json()
        docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert {"/api/v1/series", "/api/v1/series/{series_instance_uid}", "/api/v1/jobs",
            "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/retry",
            "/api/v1/jobs/{job_id}/cancel", "/api/v1/destinations",
            "/api/v1/destinations/{name}/echo", "/api/v1/associations", "/api/v1/refusals",
            "/api/v1/audit", "/api/v1/login", "/api/v1/logout", "/api/v1/me"
            } <= set(schema["paths"])


@pytest.mark.parametrize("path", READS)
def test_every_read_needs_a_user(console: Console, path: str) -> None:
    with console.client() as client:
        answer = client.get(path)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic")
    assert answer.json()["status"] == 401 and "authentication required" in answer.json()["detail"]


@pytest.mark.parametrize("path", READS)
def test_a_viewer_reads_every_listing(console: Console, path: str) -> None:
    with console.client("victor") as client:
        answer = client.get(path)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"


def test_me_names_the_user_and_role(console: Console) -> None:
    with console.client("olga") as operator, console.client("victor") as viewer:
        assert operator.get("/api/v1/me").json() == {"user": "olga", "role": "operator",
                                                     "via": "basic", "open": False}
        assert viewer.get("/api/v1/me").json()["role"] == "viewer"


def test_wrong_password_is_refused_and_recorded(console: Console) -> None:
    with httpx.Client(base_url=console.url, auth=("olga", "wrong")) as client:
        answer = client.get("/api/v1/jobs")
    assert answer.status_code == 401 and answer.json()["detail"] == "wrong user name or password"
    with console.client("victor") as client:
        audit = client.get("/api/v1/audit", params={"action": "login-failed"}).json()
    assert any(a["user"] == "olga" and a["address"] == "127.0.0.1"
               and a["detail"] == "wrong password" for a in audit["items"])


def test_series_filters_and_detail(console: Console, failed_job: dict[str, Any]) -> None:
    uid = failed_job["series_instance_uid"]
    with console.client("victor") as client:
        def uids(**params: Any) -> list[str]:
            answer = client.get("/api/v1/series", params=params)
            assert answer.status_code == 200, answer.text
            return [s["series_instance_uid"] for s in answer.json()["items"]]

        assert uid in uids()
        assert uid in uids(state="complete", modality="ct")
        assert uid not in uids(state="receiving")
        assert uid not in uids(modality="MR")
        assert uid in uids(received_after="2000-01-01T00:00:00Z",
                           received_before="2999-01-01T00:00:00+00:00")
        assert uid not in uids(received_after="2999-01-01T00:00:00Z")
        assert uid not in uids(received_before="2000-01-01T00:00:00")
        detail = client.get(f"/api/v1/series/{uid}").json()
    assert detail["instances"] == detail["instances_held"] == 20
    assert detail["modality"] == "CT" and detail["state"] == "complete"
    assert detail["revisions"] == [{"revision": 1, "instances": 20, "jobs": [failed_job["id"]]}]
    assert [j["id"] for j in detail["jobs"]] == [failed_job["id"]]
    assert detail["links"]["self"] == f"https://node.example.org/api/v1/series/{uid}"


def test_jobs_filters_and_detail(console: Console, failed_job: dict[str, Any]) -> None:
    job_id = failed_job["id"]
    with console.client("victor") as client:
        def ids(**params: Any) -> list[int]:
            return [j["id"] for j in client.get("/api/v1/jobs", params=params).json()["items"]]

        assert job_id in ids(pipeline="vertebral-bodies-ct")
        assert job_id not in ids(pipeline="spineps")
        assert job_id not in ids(state="done")
        detail = client.get(f"/api/v1/jobs/{job_id}").json()
    assert detail["error_kind"] and detail["error_message"]
    assert {"complete", "routed", "loading", "failed"} <= set(detail["stage_times"])
    assert detail["stage_seconds"] and detail["deliveries"] == []
    assert detail["results"]["folder"].endswith(f"jobs/{job_id:08d}")
    assert detail["results"]["files"] == []
    assert detail["links"]["retry"] == f"https://node.example.org/api/v1/jobs/{job_id}/retry"


def test_status_json_and_the_api_give_the_same_job(console: Console,
                                                  failed_job: dict[str, Any]) -> None:
    job_id = failed_job["id"]
    status = console.node.status()
    with console.client("victor") as client:
        listed = client.get("/api/v1/jobs").json()["items"]
        detail = client.get(f"/api/v1/jobs/{job_id}").json()
        series = client.get("/api/v1/series").json()["items"]
        refusals = client.get("/api/v1/refusals", params={"limit": 20}).json()
    by_id = {j["id"]: j for j in status["jobs"]}
    assert {j["id"]: j for j in listed} == by_id
    assert {k: v for k, v in detail.items() if k not in ("results", "links")} == by_id[job_id]
    assert {s["series_instance_uid"]: s for s in series} == {
        s["series_instance_uid"]: s for s in status["series"]}
    assert refusals == status["rejections"]


def test_unknown_objects_are_404_json(console: Console) -> None:
    with console.client("olga") as client:
        for method, path in [("GET", "/api/v1/jobs/999999"), ("GET", "/api/v1/series/1.2.3"),
                             ("POST", "/api/v1/jobs/999999/retry"),
                             ("POST", "/api/v1/jobs/999999/cancel"),
                             ("POST", "/api/v1/destinations/nowhere/echo"),
                             ("GET", "/api/v1/nothing-here")]:
            answer = client.request(method, path)
            assert answer.status_code == 404, (path, answer.text)
            assert answer.headers["content-type"] == "application/json"
            assert answer.json()["status"] == 404


@pytest.mark.parametrize("path", [
    "/api/v1/jobs?state=bogus", "/api/v1/jobs?limit=0", "/api/v1/jobs/abc",
    "/api/v1/series?state=bogus", "/api/v1/series?received_after=yesterday",
    "/api/v1/associations?outcome=maybe", "/api/v1/refusals?offset=-1"])
def test_invalid_parameters_are_422_json(console: Console, path: str) -> None:
    with console.client("victor") as client:
        answer = client.get(path)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["status"] == 422 and body["detail"] == "request validation failed"
    assert body["errors"] and body["errors"][0]["loc"][0] in ("query", "path")


def test_failed_job_is_retried_by_an_operator_and_audited(console: Console,
                                                          failed_job: dict[str, Any]) -> None:
    job_id = failed_job["id"]
    with console.client("victor") as viewer, console.client("olga") as operator:
        refused = viewer.post(f"/api/v1/jobs/{job_id}/retry")
        assert refused.status_code == 403 and "operator role" in refused.json()["detail"]
        answer = operator.post(f"/api/v1/jobs/{job_id}/retry")
        assert answer.status_code == 200, answer.text
        assert answer.json()["job"]["state"] in ("routed", "loading", "segmenting", "failed")
        again = poll(lambda: viewer.get(f"/api/v1/jobs/{job_id}").json(),
                     lambda j: j["state"] == "failed"
                     and j["stage_times"]["failed"] > failed_job["stage_times"]["failed"])
        assert again["error_kind"] == failed_job["error_kind"]
        audit = viewer.get("/api/v1/audit", params={"action": "retry"}).json()["items"]
    assert audit[0]["user"] == "olga" and audit[0]["target"] == f"job:{job_id}"
    assert audit[0]["outcome"] == "ok" and audit[0]["at"]


def test_cancel_by_an_operator_then_refused_as_json(console: Console,
                                                    failed_job: dict[str, Any]) -> None:
    job_id = failed_job["id"]
    with console.client("victor") as viewer, console.client("olga") as operator:
        poll(lambda: viewer.get(f"/api/v1/jobs/{job_id}").json()["state"],
             lambda state: state == "failed")
        assert viewer.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 403
        answer = operator.post(f"/api/v1/jobs/{job_id}/cancel")
        assert answer.status_code == 200 and answer.json()["job"]["state"] == "cancelled"
        again = operator.post(f"/api/v1/jobs/{job_id}/cancel")
        assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
        audit = viewer.get("/api/v1/audit", params={"action": "cancel"}).json()["items"]
    assert [a["outcome"] for a in audit[:2]] == ["not-cancellable", "ok"]


def test_destinations_health_and_echo(console: Console) -> None:
    with console.client("victor") as viewer, console.client("olga") as operator:
        names = {d["name"] for d in viewer.get("/api/v1/destinations").json()["items"]}
        assert names == {"self", "down"}
        assert viewer.post("/api/v1/destinations/self/echo").status_code == 403
        up = operator.post("/api/v1/destinations/self/echo").json()
        down = operator.post("/api/v1/destinations/down/echo").json()
        listed = {d["name"]: d for d in viewer.get("/api/v1/destinations").json()["items"]}
        audit = viewer.get("/api/v1/audit", params={"action": "echo"}).json()["items"]
    assert up["reachable"] is True and up["detail"] == "C-ECHO ok" and up["checked_at"]
    assert down["reachable"] is False and down["detail"] == "unreachable"
    assert listed == {"self": up, "down": down}
    assert {(a["target"], a["outcome"]) for a in audit} >= {
        ("destination:self", "ok"), ("destination:down", "unreachable")}
    assert {d["name"]: d for d in console.node.status()["destinations"]} == listed


def test_associations_and_refusals(console: Console, failed_job: dict[str, Any],
                                   tmp_path: Path) -> None:
    uid = write_short_pixel_data(tmp_path / "short.dcm")
    storescu(console.node.port, tmp_path / "short.dcm")
    with console.client("victor") as client:
        refusals = poll(lambda: client.get("/api/v1/refusals").json(),
                        lambda r: r["total"] >= 1)
        kinds = client.get("/api/v1/refusals", params={"kind": "pixel-data-length"}).json()
        associations = client.get("/api/v1/associations").json()
        released = client.get("/api/v1/associations", params={"outcome": "released",
                                                               "limit": 1}).json()
    assert refusals["by_kind"] == {"pixel-data-length": 1}
    assert kinds["recent"][0]["sop_instance_uid"] == uid
    assert kinds["recent"][0]["status"] == "0xC008"
    assert associations["total"] >= 2 and associations["by_outcome"]["released"] >= 2
    assert {"STORESCU"} <= {a["calling_ae_title"] for a in associations["recent"]}
    assert len(released["recent"]) == 1 and released["recent"][0]["outcome"] == "released"


def test_session_cookie_needs_the_csrf_token_for_actions(console: Console,
                                                         failed_job: dict[str, Any]) -> None:
    with httpx.Client(base_url=console.url) as client:
        assert client.post("/api/v1/login", json={"name": "olga", "password": "x"}
                           ).status_code == 401
        login = client.post("/api/v1/login", json={"name": "olga",
                                                    "password": "operator-secret"})
        assert login.status_code == 200, login.text
        cookies = login.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("dicomnode_session="))
        assert "HttpOnly" in session and "SameSite=strict" in session
        csrf = login.json()["csrf_token"]
        assert client.cookies["dicomnode_csrf"] == csrf
        assert client.get("/api/v1/me").json()["via"] == "session"
        path = "/api/v1/destinations/self/echo"
        assert client.post(path).status_code == 403
        assert client.post(path, headers={"X-CSRF-Token": "guess"}).status_code == 403
        assert client.post(path, headers={"X-CSRF-Token": csrf}).status_code == 200
        client.cookies.set("dicomnode_session", "forged.signature")
        assert client.get("/api/v1/me").status_code == 401
    with httpx.Client(base_url=console.url) as client:
        client.post("/api/v1/login", json={"name": "victor", "password": "viewer-secret"})
        csrf = client.cookies["dicomnode_csrf"]
        assert client.post("/api/v1/destinations/self/echo",
                           headers={"X-CSRF-Token": csrf}).status_code == 403  # a viewer
        assert client.post("/api/v1/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
        assert client.get("/api/v1/me").status_code == 401


def test_cross_origin_actions_are_refused(console: Console) -> None:
    with console.client("olga") as client:
        answer = client.post("/api/v1/destinations/self/echo",
                             headers={"Origin": "https://evil.example"})
    assert answer.status_code == 403 and "cross-origin" in answer.json()["detail"]


def test_failed_logins_are_rate_limited_per_address(console: Console) -> None:
    wrong = {"Authorization": "Basic " + base64.b64encode(b"olga:nope").decode()}
    with console.client(local_address="127.0.0.9") as client:
        codes = [client.get("/api/v1/me", headers=wrong).status_code for _ in range(5)]
        blocked = client.post("/api/v1/login", json={"name": "olga",
                                                     "password": "operator-secret"})
    assert codes == [401] * 5
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    with console.client("olga") as elsewhere:  # another address is not blocked
        assert elsewhere.get("/api/v1/me").status_code == 200
        audit = elsewhere.get("/api/v1/audit", params={"action": "login-failed"}).json()
    assert sum(a["address"] == "127.0.0.9" for a in audit["items"]) == 5


def test_metrics_need_the_bearer_token(console: Console) -> None:
    with console.client() as client:
        missing = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        scraped = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["status"] == 401
    assert scraped.status_code == 200, scraped.text
    assert scraped.headers["content-type"].startswith("text/plain")
    assert "dicomnode_" in scraped.text


def test_a_busy_console_does_not_hold_the_dicom_listener(console: Console) -> None:
    """Eight clients reading as fast as they can while C-ECHOs go to the listener."""
    stop = threading.Event()
    answered: list[int] = []

    def hammer() -> None:
        with console.client("victor") as client:
            while not stop.is_set():
                answered.append(client.get("/api/v1/series").status_code)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        timings = []
        for _ in range(5):
            started = time.monotonic()
            assert echoscu(console.node.port).returncode == 0
            timings.append(time.monotonic() - started)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert len(answered) > 20 and set(answered) == {200}
    assert max(timings) < 5, timings


def test_job_detail_lists_the_files_of_its_results(console: Console,
                                                   failed_job: dict[str, Any]) -> None:
    job_id = failed_job["id"]
    folder = console.node.root / "var" / "jobs" / f"{job_id:08d}"
    (folder / "seg").mkdir(parents=True)
    (folder / "result.json").write_text("{}")
    (folder / "seg" / "seg.dcm").write_bytes(b"\0" * 300)
    with console.client("victor") as client:
        results = client.get(f"/api/v1/jobs/{job_id}").json()["results"]
    assert results["folder"] == str(folder)
    assert results["files"] == [{"name": "result.json", "bytes": 2},
                                {"name": "seg/seg.dcm", "bytes": 300}]


def test_job_result_files_are_downloaded_and_linked(console: Console,
                                                    failed_job: dict[str, Any]) -> None:
    job_id = failed_job["id"]
    folder = console.node.root / "var" / "jobs" / f"{job_id:08d}"
    (folder / "seg").mkdir(parents=True, exist_ok=True)
    (folder / "01_SR.dcm").write_bytes(b"\0" * 128 + b"DICM")
    (folder / "preview.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / "seg" / "seg.dcm").write_bytes(b"\0" * 300)
    with console.client("victor") as client:
        links = client.get(f"/api/v1/jobs/{job_id}").json()["links"]["files"]
        sr = client.get(f"/api/v1/jobs/{job_id}/files/01_SR.dcm")
        png = client.get(f"/api/v1/jobs/{job_id}/files/preview.png")
        nested = client.get(f"/api/v1/jobs/{job_id}/files/seg/seg.dcm")
    base = f"https://node.example.org/api/v1/jobs/{job_id}/files/"
    assert links["01_SR.dcm"] == base + "01_SR.dcm" and links["seg/seg.dcm"] == base + "seg/seg.dcm"
    assert sr.status_code == 200 and sr.content == b"\0" * 128 + b"DICM"
    assert sr.headers["content-type"] == "application/dicom"
    assert sr.headers["content-disposition"] == 'attachment; filename="01_SR.dcm"'
    assert png.headers["content-type"] == "image/png"
    assert png.headers["content-disposition"].startswith("inline")
    assert nested.status_code == 200 and len(nested.content) == 300


def test_job_result_files_outside_the_folder_are_404_json(console: Console,
                                                          failed_job: dict[str, Any]) -> None:
    job_id = failed_job["id"]
    folder = console.node.root / "var" / "jobs" / f"{job_id:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "outside.dcm").unlink(missing_ok=True)
    (folder / "outside.dcm").symlink_to(console.node.root / "var" / "web.secret")
    with console.client("victor") as client:
        for name in ("..%2F..%2Fweb.secret", "%2E%2E/%2E%2E/web.secret", "%2Fetc%2Fpasswd",
                     "seg", "outside.dcm", "missing.dcm", ""):
            answer = client.get(f"/api/v1/jobs/{job_id}/files/{name}")
            assert answer.status_code == 404, (name, answer.status_code, answer.text[:200])
            assert answer.headers["content-type"] == "application/json"
            assert answer.json()["status"] == 404
        assert client.get("/api/v1/jobs/999999/files/01_SR.dcm").status_code == 404
    with console.client() as client:  # no user
        assert client.get(f"/api/v1/jobs/{job_id}/files/01_SR.dcm").status_code == 401


def test_non_ascii_session_or_csrf_values_are_refused_not_errors(console: Console) -> None:
    """Forged values a browser can send (latin-1 header bytes): 401/403, never a 500."""
    with httpx.Client(base_url=console.url) as client:
        assert client.get("/api/v1/me", headers={
            "Cookie": "dicomnode_session=caf\xe9.sign\xe9".encode("latin-1")}).status_code == 401
        client.post("/api/v1/login", json={"name": "olga", "password": "operator-secret"})
        answer = client.post("/api/v1/destinations/self/echo",
                             headers={"X-CSRF-Token": "caf\xe9".encode("latin-1")})
    assert answer.status_code == 403, answer.text


def test_a_scripts_unauthenticated_request_gets_no_basic_challenge(console: Console) -> None:
    """A page's fetch after its session ended: 401 without WWW-Authenticate, so the browser
    shows the console's login rather than its own password dialog; curl still gets one."""
    with console.client() as client:
        scripted = client.get("/api/v1/jobs", headers={"Sec-Fetch-Mode": "cors"})
        plain = client.get("/api/v1/jobs")
    assert scripted.status_code == plain.status_code == 401
    assert "www-authenticate" not in scripted.headers
    assert plain.headers["www-authenticate"].startswith("Basic")


def test_kept_alive_requests_do_not_wait_for_delayed_acks(console: Console) -> None:
    """TCP_NODELAY on the console's socket: the second and later responses on one connection
    come back in milliseconds, not after a ~40 ms delayed ACK."""
    with console.client("victor") as client:
        client.get("/api/v1/me")
        timings = []
        for _ in range(10):
            started = time.perf_counter()
            assert client.get("/api/v1/me").status_code == 200
            timings.append(time.perf_counter() - started)
    assert sorted(timings)[len(timings) // 2] < 0.035, timings
