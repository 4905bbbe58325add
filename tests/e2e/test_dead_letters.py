"""Dead letters through the console: a destination that stays down long enough makes its
delivery give up; the API lists it under the destination; once the destination is back an
operator requeues it and the results arrive, once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import jobs_in, orthanc_objects
from tests.e2e.test_end_to_end import small_ct_folder  # noqa: F401 - fixture
from tests.orthanc import Orthanc
from tests.service.conftest import storescu


def test_dead_letters_are_listed_and_requeued(make_e2e_node: Any, orthanc: Orthanc,
                                              small_ct_folder: Path) -> None:  # noqa: F811
    orthanc.stop()
    node = make_e2e_node(orthanc, dispatch={"max_attempts": 2})
    assert storescu(node.port, small_ct_folder).returncode == 0
    status = node.wait_for(jobs_in(node, "dead"), timeout=300)
    (job,) = status["jobs"]
    api = httpx.Client(base_url=f"http://127.0.0.1:{node.config['web']['port']}/api/v1",
                       timeout=60)
    with api:
        dead = api.get("/destinations/pacs/dead-letters").json()
        assert dead["total"] == 1
        (letter,) = dead["items"]
        assert (letter["job_id"], letter["state"], letter["attempts"]) == (job["id"], "dead", 2)
        assert letter["error_kind"] == "unreachable"
        assert letter["series_instance_uid"] == job["series_instance_uid"]
        assert api.get("/destinations/nowhere/dead-letters").status_code == 404

        orthanc.start()
        answer = api.post("/destinations/pacs/requeue")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"destination": "pacs", "requeued": 1, "jobs": [job["id"]]}
        node.wait_for(jobs_in(node, "done"), timeout=120)
        assert api.get("/destinations/pacs/dead-letters").json()["total"] == 0
        audit = api.get("/audit", params={"action": "requeue"}).json()["items"]
    assert (audit[0]["target"], audit[0]["outcome"]) == ("destination:pacs", "ok")
    objects = orthanc_objects(orthanc)
    assert objects and len(objects) == len({ds.SOPInstanceUID for ds in objects})
