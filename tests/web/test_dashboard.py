"""The console's pages against a real ``dicomnode serve``: HTTP checks (login redirects, security
headers, HTML errors), then Debian's Chromium driven by Playwright: log in, send series with
dcmtk's storescu and watch the job list follow them without reloading, a job that fails
because no model is installed, the model installed, Retry pressed and the job done with its
preview and measurements; a viewer cannot retry."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.models.test_trained_model import write_ct_series as write_trained_ct
from tests.models.train_small_model import TRAINED_CT_MODEL
from tests.service.conftest import _cli, running_nodes, storescu, write_ct_series
from tests.web.conftest import (
    PASSWORDS,
    ROLES,
    Console,
    add_user,
    free_port,
    wait_for_port,
    web_config,
)
from tests.web.test_api import poll

VIEWER_URL = "http://ohif.example.org:3000"
PAGES = ["/", "/series", "/jobs", "/destinations", "/models", "/audit"]
#: Seconds a job may take on the 2 shared CPU cores (112-slice CT through the test model).
JOB_TIMEOUT = 300

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """A node as the API tests' (CT to vertebral-bodies-ct, no weights installed, results to
    itself), with the users olga (operator) and victor (viewer) and an OHIF viewer URL."""
    with running_nodes(tmp_path_factory.mktemp("dashboard")) as launch:
        port, web_port = free_port(), free_port()
        users = tmp_path_factory.mktemp("dashboard-users")
        (users / "config.yaml").write_text(f"web:\n  users_file: {users / 'users.yaml'}\n")
        for name, password in PASSWORDS.items():
            added = add_user(users / "config.yaml", name, password, ROLES[name], users)
            assert added.returncode == 0, added.stderr
        node = launch(web_config(port, web_port, users_file=str(users / "users.yaml"),
                                 viewer_url=VIEWER_URL), port)
        wait_for_port(web_port, node)
        yield Console(node, web_port)


@pytest.fixture(scope="module")
def trained_ct(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    """TotalSegmentator's example CT as a DICOM series: the test model finds T12-sacrum."""
    folder = tmp_path_factory.mktemp("trained-ct")
    write_trained_ct(folder)
    return [pydicom.dcmread(path) for path in sorted(folder.iterdir())]


def send_ct(console: Console, sources: list[Dataset], folder: Path) -> dict[str, str]:
    """One new series (new study, series and instance UIDs) of ``sources``, sent with dcmtk's
    storescu; returns its Study and Series Instance UIDs."""
    write_ct_series(folder, len(sources), sources=sources)
    sent = storescu(console.node.port, folder)
    assert sent.returncode == 0, sent.stdout
    first = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    return {"study": str(first.StudyInstanceUID), "series": str(first.SeriesInstanceUID)}


# --- HTTP -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", PAGES)
def test_pages_without_a_user_redirect_to_the_login(dashboard: Console, path: str) -> None:
    with dashboard.client() as client:
        answer = client.get(path, params={"state": "failed"} if path == "/jobs" else None)
    assert answer.status_code == 303
    target = "/login?next=" + ("/jobs%3Fstate%3Dfailed" if path == "/jobs" else path)
    assert answer.headers["location"] == target


def test_login_page_and_static_files_need_no_user(dashboard: Console) -> None:
    with dashboard.client() as client:
        login = client.get("/login", params={"next": "//evil.example/"})
        script = client.get("/static/console.js")
        style = client.get("/static/console.css")
    assert login.status_code == 200 and 'id="login"' in login.text
    assert '<input type="hidden" name="next" value="/">' in login.text  # not another site
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")


@pytest.mark.parametrize("path", PAGES)
def test_every_page_answers_a_viewer_with_html_and_a_strict_policy(dashboard: Console,
                                                                 path: str) -> None:
    with dashboard.client("victor") as client:
        answer = client.get(path)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    policy = answer.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "cdn" not in answer.text.lower() and "http://" not in answer.text.split("<main>")[0]
    assert "victor" in answer.text and "viewer" in answer.text


def test_unknown_objects_are_html_404_pages(dashboard: Console) -> None:
    with dashboard.client("victor") as client:
        for path in ("/jobs/999999", "/series/1.2.3"):
            answer = client.get(path)
            assert answer.status_code == 404, path
            assert answer.headers["content-type"].startswith("text/html")
            assert "there is no" in answer.text
        assert client.get("/jobs/abc").status_code == 422


# --- the browser ------------------------------------------------------------------------------

#: Records, for each row of the job list, the states it has shown (a reload would lose it).
WATCH_JOBS = """() => {
  window.stillTheSamePage = true;
  window.seen = {};
  const body = document.querySelector('#jobs tbody');
  const record = () => body.querySelectorAll('tr[data-job]').forEach((row) => {
    const states = (window.seen[row.dataset.series] ||= []);
    const state = row.querySelector('.state').textContent;
    if (states[states.length - 1] !== state) states.push(state);
  });
  record();
  new MutationObserver(record).observe(body, {childList: true, subtree: true});
}"""


def log_in(browser: Any, console: Console, user: str) -> Any:
    """A fresh browser context logged in as ``user`` through the login page, on the overview."""
    page = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
    page.goto(f"{console.url}/jobs")
    assert page.url.endswith("/login?next=/jobs")
    page.fill("input[name=name]", user)
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    assert "wrong user name or password" in page.inner_text("#login-problem")
    assert page.input_value("input[name=name]") == user
    page.fill("input[name=password]", PASSWORDS[user])
    page.click("button[type=submit]")
    page.wait_for_url(f"{console.url}/jobs")
    assert user in page.inner_text("header")
    return page


def wait_for_state(page: Any, series_uid: str, state: str) -> list[str]:
    """Wait until the job list's row of the series shows ``state``; the states it showed."""
    page.wait_for_function(
        "([uid, state]) => (window.seen[uid] || []).slice(-1)[0] === state",
        arg=[series_uid, state], timeout=JOB_TIMEOUT * 1000)
    assert page.evaluate("window.stillTheSamePage") is True  # never reloaded
    seen: list[str] = page.evaluate("(uid) => window.seen[uid]", series_uid)
    return seen


@pytest.fixture(scope="module")
def failed_in_browser(dashboard: Console, browser: Any, trained_ct: list[Dataset],
                      tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """olga's page on the job list while a series arrives; its job fails (no weights)."""
    page = log_in(browser, dashboard, "olga")
    page.evaluate(WATCH_JOBS)
    sent = send_ct(dashboard, trained_ct, tmp_path_factory.mktemp("first"))
    seen = wait_for_state(page, sent["series"], "failed")
    job_id = int(page.get_attribute(f'tr[data-series="{sent["series"]}"]', "data-job"))
    return {"page": page, "seen": seen, "job_id": job_id, **sent}


def test_a_sent_series_appears_and_its_job_fails_without_a_reload(
        failed_in_browser: dict[str, Any], dashboard: Console) -> None:
    page = failed_in_browser["page"]
    assert failed_in_browser["seen"][-1] == "failed"
    page.goto(f"{dashboard.url}/series")
    row = page.locator(f'tr[data-series="{failed_in_browser["series"]}"]')
    assert "complete" in row.inner_text() and "CT" in row.inner_text()


def test_a_viewer_sees_the_failed_job_but_cannot_retry_it(
        failed_in_browser: dict[str, Any], dashboard: Console, browser: Any) -> None:
    job_id = failed_in_browser["job_id"]
    page = log_in(browser, dashboard, "victor")
    page.goto(f"{dashboard.url}/jobs/{job_id}")
    assert page.inner_text("#job-state") == "failed"
    retry = page.locator("#retry")
    assert retry.is_disabled() and retry.get_attribute("title") == "needs the operator role"
    assert page.locator("button:enabled[data-post]").count() == 0
    refused = page.evaluate("""async (url) => {
        const csrf = document.cookie.split('; ').find((c) => c.startsWith('dicomnode_csrf='))
          .split('=')[1];
        const answer = await fetch(url, {method: 'POST', headers: {'X-CSRF-Token': csrf}});
        return [answer.status, (await answer.json()).detail]; }""",
                            f"/api/v1/jobs/{job_id}/retry")
    assert refused[0] == 403 and "operator role" in refused[1]
    for path in ("/destinations", "/models"):
        page.goto(f"{dashboard.url}{path}")
        assert page.locator("button[data-post]").count() >= 2
        assert page.locator("button:enabled[data-post]").count() == 0
    page.context.close()


def test_install_the_model_retry_and_see_the_results(
        failed_in_browser: dict[str, Any], dashboard: Console) -> None:
    page, job_id = failed_in_browser["page"], failed_in_browser["job_id"]
    page.goto(f"{dashboard.url}/jobs/{job_id}")
    assert page.inner_text("#job-state") == "failed"
    assert "model-not-installed" in page.inner_text("#reason")
    assert "vertebral-bodies-ct-m" in page.inner_text("#reason")
    assert page.locator("#preview").count() == 0

    node = dashboard.node
    installed = subprocess.run([*_cli(), "models", "install", "vertebral-bodies-ct-m",
                                str(TRAINED_CT_MODEL), "--config", str(node.config_path)],
                               capture_output=True, text=True, timeout=300, cwd=node.root)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    page.evaluate("window.stillTheSamePage = true")
    page.click("#retry")
    page.wait_for_selector("#flash:not([hidden])")
    assert f"job {job_id} queued again" in page.inner_text("#flash")
    page.wait_for_function("() => document.getElementById('job-state').textContent === 'done'",
                           timeout=JOB_TIMEOUT * 1000)
    assert page.evaluate("window.stillTheSamePage") is True
    assert page.locator("#reason").count() == 0
    assert page.locator("#retry").is_disabled()  # a done job is not retried

    page.wait_for_function("() => { const i = document.getElementById('preview');"
                           " return i && i.complete && i.naturalWidth > 100; }")
    headers = page.locator("#measurements thead th").all_inner_texts()
    assert headers[0] == "structure" and any(h.startswith("Volume") for h in headers)
    levels = page.locator("#measurements tbody th").all_inner_texts()
    assert {f"L{n} vertebral body" for n in range(1, 6)} <= set(levels), levels
    first = page.locator("#measurements tbody tr").first.locator("td").first.inner_text()
    assert float(first) > 1  # a vertebral body's volume, mL

    timeline = page.locator("#timeline tbody tr td:first-child").all_inner_texts()
    assert timeline[0] == "complete" and timeline[-1] == "done" and "segmenting" in timeline
    assert page.get_attribute("#ohif", "href") == (
        f"{VIEWER_URL}/viewer?StudyInstanceUIDs={failed_in_browser['study']}")

    for label, media in (("SEG", "application/dicom"), ("SR", "application/dicom"),
                         ("preview", "image/png")):
        link = page.locator("#downloads a", has_text=label).first
        answer = page.request.get(f"{dashboard.url}{link.get_attribute('href')}")
        assert answer.status == 200 and answer.headers["content-type"] == media, label
        body = answer.body()
        assert body[128:132] == b"DICM" if media == "application/dicom" else \
            body.startswith(b"\x89PNG"), label


def test_a_series_moves_through_the_job_states_in_the_list(
        failed_in_browser: dict[str, Any], dashboard: Console, trained_ct: list[Dataset],
        tmp_path: Path) -> None:
    """After the retry (the model installed): a new series, watched on the job list."""
    page = failed_in_browser["page"]
    page.goto(f"{dashboard.url}/jobs")
    page.evaluate(WATCH_JOBS)
    sent = send_ct(dashboard, trained_ct, tmp_path / "second")
    seen = wait_for_state(page, sent["series"], "done")
    running = {"routed", "loading", "segmenting", "encoding", "dispatching"}
    assert len(seen) >= 3 and running & set(seen), seen
    flow = ["complete", "routed", "loading", "segmenting", "encoding", "dispatching", "done"]
    assert [flow.index(s) for s in seen] == sorted(flow.index(s) for s in seen), seen


def test_overview_models_and_destinations_in_the_browser(failed_in_browser: dict[str, Any],
                                                         dashboard: Console) -> None:
    page = failed_in_browser["page"]
    page.goto(f"{dashboard.url}/models")
    row = page.locator('tr[data-model="vertebral-bodies-ct-m"]')
    cells = row.locator("td").all_inner_texts()
    assert cells[3] == "installed" and cells[4] == "yes" and cells[7] == "yes", cells  # warm
    assert "not installed" in page.locator('tr[data-model="spineps-t2w"]').inner_text()
    row.locator("button").click()
    page.wait_for_selector("#flash:not([hidden])", timeout=JOB_TIMEOUT * 1000)
    assert "vertebral-bodies-ct-m verified" in page.inner_text("#flash")
    page.goto(f"{dashboard.url}/")
    assert int(page.inner_text("#rate-hour")) >= 2 * 112
    assert page.locator("#jobs-by-state a", has_text="done").count() == 1
    assert page.inner_text("#device") == "cpu"
    page.goto(f"{dashboard.url}/destinations")
    page.locator('tr[data-destination="down"] button').click()
    page.wait_for_function("() => document.querySelector('tr[data-destination=\"down\"]')"
                           ".textContent.includes('unreachable')", timeout=60_000)
    assert "echoed down" in page.inner_text("#flash")
    with dashboard.client("victor") as client:
        audit = poll(lambda: client.get("/api/v1/audit", params={"action": "echo"}).json(),
                     lambda a: a["items"])
    assert audit["items"][0]["user"] == "olga"
    assert audit["items"][0]["target"] == "destination:down"


def test_dead_letters_are_listed_and_requeued(dashboard: Console,
                                              failed_in_browser: dict[str, Any]) -> None:
    """A delivery that used up its attempts, as the dispatcher leaves it, then requeued."""
    job_id = failed_in_browser["job_id"]
    dashboard.node.query(
        "INSERT INTO deliveries (job_id, destination, state, attempts, next_attempt_at, "
        f"error_kind, error_message, stored) VALUES ({job_id}, 'down', 'dead', 5, "
        "'2026-01-01 00:00:00', 'unreachable', 'cannot associate', '[]')")
    page = failed_in_browser["page"]
    page.goto(f"{dashboard.url}/destinations")
    down = page.locator('section.dead-letters[data-destination="down"]')
    assert "(1)" in down.locator("h3").inner_text()
    row = down.locator(f'tr[data-job="{job_id}"]')
    assert "cannot associate" in row.inner_text()
    assert row.locator("button").is_enabled()
    assert page.locator('section.dead-letters[data-destination="self"] button').is_disabled()
    down.locator("h3 button").click()
    page.wait_for_selector("#flash:not([hidden])")
    assert "requeued the dead letters of down" in page.inner_text("#flash")
    with dashboard.client("victor") as client:
        audit = client.get("/api/v1/audit", params={"action": "requeue"}).json()["items"]
    assert audit[0]["user"] == "olga" and audit[0]["target"] == "destination:down"
    assert audit[0]["detail"] == "1 deliveries"


def test_lists_page_and_filter(dashboard: Console, failed_in_browser: dict[str, Any]) -> None:
    with dashboard.client("victor") as client:
        done = client.get("/jobs", params={"state": "done"})
        later = client.get("/jobs", params={"offset": 1})
        api = httpx.get(f"{dashboard.url}/api/v1/jobs", auth=("victor", PASSWORDS["victor"]))
    assert done.status_code == 200 and '<option selected>done</option>' in done.text
    assert 'data-source="/api/v1/jobs?state=done&amp;limit=50&amp;offset=0"' in done.text
    assert "← newer" in later.text and 'href="/jobs?offset=0"' in later.text
    assert f"of <span data-total>{api.json()['total']}</span>" in later.text


def test_instances_per_minute_reads_only_the_last_hour(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Newest first by id, in slices (three rows here), until a slice ends before the hour."""
    from datetime import timedelta

    from sqlalchemy import insert
    from sqlalchemy.orm import Session

    from dicomnode.store import Instance, Series, Study, create_schema, make_engine, utcnow
    from dicomnode.web.pages import data

    monkeypatch.setattr(data, "RATE_SLICE", 3)
    engine = make_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    create_schema(engine)
    now = utcnow()
    # minutes ago, oldest first (id order); the window starts 59 minutes before this minute
    ages = [180, 90, 61, 59, 30, 30, 30, 2, 0]
    with Session(engine) as session, session.begin():
        session.execute(insert(Study), [{"id": 1, "study_instance_uid": "1.2",
                                         "first_received_at": now}])
        session.execute(insert(Series), [{"id": 1, "series_instance_uid": "1.2.3", "study_id": 1,
                                          "first_received_at": now, "last_received_at": now}])
        session.execute(insert(Instance), [
            {"sop_instance_uid": f"1.2.3.{n}", "series_id": 1, "sop_class_uid": "1.2",
             "transfer_syntax_uid": "1.2", "path": f"{n}.dcm", "size": 1,
             "received_at": now - timedelta(minutes=age)} for n, age in enumerate(ages)])
    with Session(engine) as session:
        counts = data.instances_per_minute(session)
    engine.dispose()
    assert len(counts) == 60 and sum(counts) == 6
    assert counts[0] == 1 and counts[29] == 3 and counts[57] == 1 and counts[59] == 1
