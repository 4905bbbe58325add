"""``dispatch.return_to_sender``: results go to the rule's destinations and back to the AE that
sent the series, looked up by its calling AE title in ``dispatch.return_to``.

Real chain: a real Orthanc ("PACS A") forwards a CT series to ``dicomnode serve`` through its
REST API (``POST /modalities/<name>/store``, so the association comes from Orthanc with its own
AE title); the node segments it (nnU-Net on the CPU, random weights) and C-STOREs SEG, SR and
preview to the configured destination (Orthanc B) and back to A. A sender missing from
``return_to`` (dcmtk storescu with another AE title) gets a delivery that is dead at once.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomnode.config import ConfigError, load_config, parse_config
from dicomnode.storage import StorageLayout
from tests.e2e.conftest import jobs_in, orthanc_objects
from tests.orthanc import Orthanc, free_port
from tests.service.conftest import AE_TITLE, RunningNode, storescu

SENDER_AE = "PACSA"
CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4": "SEG", "1.2.840.10008.5.1.4.1.1.88.34": "SR",
           "1.2.840.10008.5.1.4.1.1.7": "preview", "1.2.840.10008.5.1.4.1.1.2": "CT"}


def _small_series(folder: Path, sources: list[pydicom.Dataset]) -> set[str]:
    """The example CT as a new series at 128 × 128 (uncompressed, so CPU inference and every
    transfer stay short); returns its SOP Instance UIDs."""
    study, series = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    uids = set()
    for source in sorted(sources, key=lambda ds: float(ds.ImagePositionPatient[2])):
        ds = copy.deepcopy(source)  # the session fixture's datasets are shared
        pixels = source.pixel_array[::4, ::4].copy()
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelSpacing = [float(v) * 4 for v in source.PixelSpacing]
        ds.PixelData = pixels.tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        uids.add(str(ds.SOPInstanceUID))
    return uids


def _result_uids(node: RunningNode, job_id: int) -> set[str]:
    """SOP Instance UIDs of the job's committed results (``jobs/<id>/*.dcm``)."""
    folder = StorageLayout.of(load_config(node.config_path).storage).results(job_id)
    assert folder.is_dir(), folder
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in folder.glob("*.dcm")}


def _kinds(objects: list[pydicom.Dataset]) -> dict[str, set[str]]:
    """Kind (SEG, SR, preview, CT, else the SOP Class UID) → SOP Instance UIDs."""
    out: dict[str, set[str]] = {}
    for ds in objects:
        kind = CLASSES.get(str(ds.SOPClassUID), str(ds.SOPClassUID))
        out.setdefault(kind, set()).add(str(ds.SOPInstanceUID))
    return out


def _return_to(port: int) -> dict[str, Any]:
    return {"return_to_sender": True,
            "return_to": {SENDER_AE: {"host": "127.0.0.1", "port": port}}}


def test_results_go_to_the_destination_and_back_to_the_sending_pacs(
        make_e2e_node: Any, orthanc: Orthanc, ct_sources: list[pydicom.Dataset],
        tmp_path: Path) -> None:
    pacs_b = orthanc
    a_port = free_port()
    node = make_e2e_node(pacs_b, dispatch=_return_to(a_port))
    pacs_a = Orthanc(tmp_path / "pacs_a", ae_title=SENDER_AE, dicom_port=a_port,
                     modalities={"dicomnode": (AE_TITLE, "127.0.0.1", node.port)})
    pacs_a.start()
    try:
        ct_uids = _small_series(tmp_path / "ct", ct_sources)
        for path in sorted((tmp_path / "ct").iterdir()):
            pacs_a.post("/instances", path.read_bytes())
        (series_id,) = pacs_a.get("/series")
        # Orthanc A forwards the series to the node under its own AE title
        pacs_a.post("/modalities/dicomnode/store",
                    {"Resources": [series_id], "Synchronous": True})
        status = node.wait_for(jobs_in(node, "done", "failed", "dead"), timeout=300)
        (job,) = status["jobs"]
        assert job["state"] == "done", job
        assert job["sender"] == SENDER_AE
        deliveries = {d["destination"]: d for d in job["deliveries"]}
        assert set(deliveries) == {"pacs", f"sender:{SENDER_AE}"}, deliveries
        assert all(d["state"] == "delivered" and d["error_kind"] is None
                   for d in deliveries.values()), deliveries

        results = _result_uids(node, job["id"])
        in_b = _kinds(orthanc_objects(pacs_b))
        in_a = _kinds(orthanc_objects(pacs_a))
        # SEG, SR and preview (secondary capture) in both, the same objects
        for kinds in (in_a, in_b):
            assert kinds.get("SEG") and len(kinds.get("SR", ())) == 1 and kinds.get("preview"), \
                kinds
        assert set().union(*in_b.values()) == results
        assert set().union(*in_a.values()) == results | ct_uids
        assert in_a["CT"] == ct_uids and "CT" not in in_b
        assert all(d["objects"] == len(results) for d in deliveries.values()), deliveries

        # the C-ECHO health check includes the return address, under its delivery name
        health = node.wait_for(lambda s: any(
            d["name"] == f"sender:{SENDER_AE}" and d["reachable"] for d in s["destinations"]),
            timeout=30)
        assert {d["name"] for d in health["destinations"]} == {"pacs", f"sender:{SENDER_AE}"}
        # the same report from the CLI
        assert node.status()["jobs"][0]["sender"] == SENDER_AE
    finally:
        pacs_a.stop()


def test_unknown_sender_is_dead_at_once_while_the_destination_still_gets_results(
        make_e2e_node: Any, orthanc: Orthanc, ct_sources: list[pydicom.Dataset],
        tmp_path: Path) -> None:
    node = make_e2e_node(orthanc, dispatch=_return_to(free_port()))
    _small_series(tmp_path / "ct", ct_sources)
    sent = storescu(node.port, tmp_path / "ct", calling="UNKNOWNAE", timeout=120)
    assert sent.returncode == 0, sent.stdout
    status = node.wait_for(jobs_in(node, "done", "failed", "dead"), timeout=300)
    (job,) = status["jobs"]
    assert job["sender"] == "UNKNOWNAE"
    assert job["state"] == "dead", job
    assert job["error_kind"] == "unknown-sender"
    deliveries = {d["destination"]: d for d in job["deliveries"]}
    assert set(deliveries) == {"pacs", "sender:UNKNOWNAE"}
    unknown = deliveries["sender:UNKNOWNAE"]
    # dead after one attempt (max_attempts is 50 here): no retry can find an address
    assert unknown["state"] == "dead" and unknown["attempts"] == 1, unknown
    assert unknown["error_kind"] == "unknown-sender"
    assert "UNKNOWNAE" in unknown["error_message"]
    assert "dispatch.return_to" in unknown["error_message"]
    assert deliveries["pacs"]["state"] == "delivered"
    results = _result_uids(node, job["id"])
    assert set(orthanc.sop_instance_uids()) == results

    # a person may retry: only the undelivered return is re-queued, and it is dead again
    retry = subprocess.run([sys.executable, "-m", "dicomnode.cli", "jobs", "retry",
                            str(job["id"]), "--config", str(node.config_path)],
                           check=False, capture_output=True, text=True, timeout=60,
                           cwd=node.root)
    assert retry.returncode == 0, retry.stderr
    assert "dispatching" in retry.stdout
    status = node.wait_for(lambda s: s["jobs"][0]["state"] in ("done", "dead")
                           and s["jobs"][0]["deliveries"]
                           and all(d["state"] != "pending" for d in s["jobs"][0]["deliveries"]),
                           timeout=60)
    (job,) = status["jobs"]
    assert job["state"] == "dead" and job["error_kind"] == "unknown-sender"
    deliveries = {d["destination"]: d for d in job["deliveries"]}
    assert deliveries["sender:UNKNOWNAE"]["attempts"] == 1
    assert deliveries["pacs"]["state"] == "delivered"
    uids = orthanc.sop_instance_uids()
    assert len(uids) == len(results) and set(uids) == results  # not sent to B again


def test_unknown_sender_does_not_stop_retries_to_a_destination_that_is_down(
        make_e2e_node: Any, orthanc: Orthanc, ct_sources: list[pydicom.Dataset],
        tmp_path: Path) -> None:
    """The README: an unlisted sender's delivery is dead at once "while the other destinations
    still get the results", also when one of them is down at that moment."""
    orthanc.stop()
    node = make_e2e_node(orthanc, dispatch=_return_to(free_port()))
    _small_series(tmp_path / "ct", ct_sources)
    sent = storescu(node.port, tmp_path / "ct", calling="UNKNOWNAE", timeout=120)
    assert sent.returncode == 0, sent.stdout

    def delivery(status: dict[str, Any], name: str) -> dict[str, Any]:
        found = [d for j in status["jobs"] for d in j["deliveries"] if d["destination"] == name]
        return found[0] if found else {}

    node.wait_for(lambda s: delivery(s, "sender:UNKNOWNAE").get("state") == "dead"
                  and delivery(s, "pacs").get("attempts", 0) >= 1, timeout=300)
    orthanc.start()
    status = node.wait_for(lambda s: delivery(s, "pacs").get("state") == "delivered",
                           timeout=60)
    status = node.wait_for(jobs_in(node, "done", "dead"), timeout=30)
    (job,) = status["jobs"]
    assert (job["state"], job["error_kind"]) == ("dead", "unknown-sender"), job
    assert set(orthanc.sop_instance_uids()) == _result_uids(node, job["id"])


def test_return_to_sender_without_return_to_is_a_dispatch_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"dispatch": {"return_to_sender": True}})
    assert [p.key for p in caught.value.problems] == ["dispatch"]
    assert "return_to" in str(caught.value)
    # with an address it is valid, and the return goes to that AE title at that address
    config = parse_config({"dispatch": _return_to(11112)})
    destination = config.dispatch.sender_destination(SENDER_AE)
    assert destination is not None
    assert (destination.ae_title, destination.host, destination.port) == \
        (SENDER_AE, "127.0.0.1", 11112)
    assert config.dispatch.sender_destination("UNKNOWNAE") is None
