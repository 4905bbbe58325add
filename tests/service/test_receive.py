"""Receiving over DICOM: a real ``dicomnode serve`` driven by dcmtk's echoscu and storescu."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless
from pynetdicom import AE, _config as pynetdicom_config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.service.conftest import (
    AE_TITLE,
    echoscu,
    storescu,
    write_ct_series,
    write_non_image,
    write_short_pixel_data,
)

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
GRAYSCALE_PR = "1.2.840.10008.5.1.4.1.1.11.1"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"


def send_raw_c_store(port: int, path: Path, keep_bytes: int, tmp_path: Path) -> int:
    """Send a file cut after ``keep_bytes`` of its data set, byte for byte (pynetdicom's
    chunked sending reads no more than the file meta); return the response status."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    start = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:start + keep_bytes])
    ae = AE(ae_title="BROKENSCU")
    ae.add_requested_context(CTImageStorage, JPEG2000Lossless)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(cut).Status)
    finally:
        assoc.release()


def _series(status: dict[str, Any], uid: str) -> dict[str, Any]:
    return next(s for s in status["series"] if s["series_instance_uid"] == uid)


def test_example_ct_is_received_indexed_and_completed(make_node: Any, example_ct_folder: Path
                                                      ) -> None:
    """The README's first steps: C-ECHO, then the example study with empty Study/Series UIDs."""
    node = make_node()
    assert echoscu(node.port).returncode == 0
    sent = storescu(node.port, example_ct_folder)
    assert sent.returncode == 0, sent.stdout

    status = node.status()  # the real CLI, as an operator runs it
    assert [s["instances"] for s in status["series"]] == [20]
    series = status["series"][0]
    assert series["modality"] == "CT" and series["uid_synthesized"] is True
    assert {"series_instance_uid", "instances", "state"} <= series.keys()
    assert status["instances"] == 20 and status["rejections"]["total"] == 0

    done = node.wait_for(lambda s: s["series"][0]["state"] == "complete" and s["jobs"])
    assert [(j["state"], j["revision"], j["instances"]) for j in done["jobs"]] == [
        ("complete", 1, 20)]

    # Spool: <study>/<series>/<sop>.dcm, stored as sent (JPEG 2000 pixel data untouched).
    files = sorted(node.spool.glob("*/*/*.dcm"))
    assert len(files) == 20 and not list(node.spool.glob(".incoming/*"))
    stored = pydicom.dcmread(files[0])
    assert stored.file_meta.TransferSyntaxUID == JPEG2000Lossless
    original = pydicom.dcmread(example_ct_folder / files[0].name)
    assert stored.PixelData == original.PixelData
    assert stored.file_meta.SourceApplicationEntityTitle == "STORESCU"
    assert node.stop() == 0  # SIGTERM: graceful exit


def test_association_policy_rejections_are_audited(make_node: Any) -> None:
    node = make_node(node={"allowed_calling_ae_titles": ["MODALITY1"]})
    assert echoscu(node.port, calling="MODALITY1").returncode == 0
    refused = echoscu(node.port, calling="STRANGER")
    assert refused.returncode != 0 and "Rejected" in refused.stdout
    assert echoscu(node.port, calling="MODALITY1", called="OTHERNODE").returncode != 0

    # The released association's row is closed just after the peer got its answer.
    node.wait_for(lambda s: s["associations"]["by_outcome"].get("released") == 1)
    associations = node.status()["associations"]
    reasons = sorted(a["reason"] for a in associations["recent"] if a["outcome"] == "rejected")
    assert reasons == ["called-ae-not-recognised", "calling-ae-not-allowed"]
    assert associations["by_outcome"]["released"] == 1


def test_host_allow_list(make_node: Any) -> None:
    node = make_node(node={"allowed_hosts": ["10.0.0.0/8", "192.168.1.7"]})
    refused = echoscu(node.port)
    assert refused.returncode != 0 and "Rejected" in refused.stdout
    assert node.quick_status()["associations"]["recent"][0]["reason"] == "host-not-allowed"


def test_disk_reserve_refusal_is_A700(make_node: Any, tmp_path: Path,
                                      ct_sources: list[Any]) -> None:
    node = make_node(storage={"min_free": "1000000 TB"})
    write_ct_series(tmp_path / "ct", 2, sources=ct_sources)
    sent = storescu(node.port, tmp_path / "ct", extra=("-d",))  # -d prints the status code
    assert "0xa700" in sent.stdout.lower(), sent.stdout
    status = node.status()
    assert status["instances"] == 0 and status["series"] == []
    assert status["rejections"]["by_kind"] == {"disk-below-reserve": 1}  # storescu halts
    assert {r["status"] for r in status["rejections"]["recent"]} == {"0xA700"}


def test_duplicate_resend_is_idempotent(make_node: Any, tmp_path: Path,
                                        ct_sources: list[Any]) -> None:
    node = make_node()
    write_ct_series(tmp_path / "ct", 5, sources=ct_sources)
    for _ in range(2):
        sent = storescu(node.port, tmp_path / "ct")
        assert sent.returncode == 0 and "Received Store Response (Success)" in sent.stdout
    status = node.status()
    assert status["instances"] == 5 and [s["instances"] for s in status["series"]] == [5]
    assert sorted(a["duplicates"] for a in status["associations"]["recent"]
                  if a["instances_stored"] or a["duplicates"]) == [0, 5]
    assert len(list(node.spool.glob("*/*/*.dcm"))) == 5
    assert node.query("select sum(receive_count) from instances") == [(10,)]


def test_corrupt_and_truncated_datasets_are_refused(make_node: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    node = make_node()
    # 1. Native Pixel Data far shorter than the image header announces, sent by storescu.
    short = tmp_path / "short" / "short.dcm"
    short_uid = write_short_pixel_data(short)
    sent = storescu(node.port, short, extra=("-d",))
    assert "0xc008" in sent.stdout.lower(), sent.stdout

    # 2. A data set cut off in the middle of its JPEG 2000 Pixel Data (a transfer that broke),
    #    sent byte for byte by pynetdicom (storescu will not read such a file).
    whole = tmp_path / "whole"
    uid = next(iter(write_ct_series(whole, 1).values()))
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    assert send_raw_c_store(node.port, whole / "ct00000.dcm", 60_000, tmp_path) == 0xC000

    status = node.status()
    assert status["instances"] == 0 and status["series"] == []
    rejections = {r["sop_instance_uid"]: r for r in status["rejections"]["recent"]}
    assert rejections[short_uid]["kind"] == "pixel-data-length"
    assert "Pixel Data holds" in rejections[short_uid]["message"]
    assert rejections[uid]["kind"] == "truncated-dataset"
    assert not list(node.spool.glob("*/*/*.dcm"))
    assert len(list(node.spool.glob(".quarantine/*.dcm"))) == 2


def test_non_image_objects_are_stored_but_never_image_jobs(make_node: Any, tmp_path: Path,
                                                          ct_sources: list[Any]) -> None:
    node = make_node()
    folder = tmp_path / "mixed"
    sr = write_non_image(folder, BASIC_TEXT_SR, "SR")
    pr = write_non_image(folder, GRAYSCALE_PR, "PR")
    ko = write_non_image(folder, KEY_OBJECT_SELECTION, "KO")
    write_ct_series(folder / "ct", 3, sources=ct_sources)
    sent = storescu(node.port, folder)
    assert sent.returncode == 0, sent.stdout

    status = node.wait_for(lambda s: len(s["series"]) == 4
                           and all(x["state"] == "complete" for x in s["series"]))
    by_modality = {s["modality"]: s for s in status["series"]}
    assert {m: by_modality[m]["is_image"] for m in by_modality} == {
        "SR": False, "PR": False, "KO": False, "CT": True}
    assert status["instances"] == 6
    job_series = {j["series_instance_uid"] for j in node.status()["jobs"]}
    assert job_series == {by_modality["CT"]["series_instance_uid"]}
    indexed = {uid for (uid,) in node.query("select sop_instance_uid from instances")}
    assert {sr, pr, ko} <= indexed


def test_eight_concurrent_associations(make_node: Any, tmp_path: Path,
                                       ct_sources: list[Any], database_url: str) -> None:
    """8 senders at once, 50 instances each (400), every one acknowledged and indexed, with
    the index on SQLite and on PostgreSQL."""
    import concurrent.futures

    node = make_node(storage={"database_url": database_url})
    folders = []
    for i in range(8):
        write_ct_series(tmp_path / f"sender{i}", 50, sources=ct_sources)
        folders.append(tmp_path / f"sender{i}")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda f: storescu(node.port, f, calling="SENDER"), folders))
    for result in results:
        assert result.returncode == 0, result.stdout[-3000:]
        assert result.stdout.count("Received Store Response (Success)") == 50
    status = node.status()
    assert status["instances"] == 400
    assert sorted(s["instances"] for s in status["series"]) == [50] * 8
    assert status["rejections"]["total"] == 0
    assert len(list(node.spool.glob("*/*/*.dcm"))) == 400


@pytest.mark.parametrize("fsync", [True])
def test_late_instance_reopens_series_as_new_revision(make_node: Any, tmp_path: Path,
                                                      ct_sources: list[Any], fsync: bool) -> None:
    node = make_node(storage={"fsync": fsync})
    study, series = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.1.1"
    write_ct_series(tmp_path / "first", 3, study_uid=study, series_uid=series,
                    sources=ct_sources)
    assert storescu(node.port, tmp_path / "first").returncode == 0
    node.wait_for(lambda s: s["jobs"] and s["series"][0]["state"] == "complete")

    write_ct_series(tmp_path / "late", 1, study_uid=study, series_uid=series,
                    sources=ct_sources)
    assert storescu(node.port, tmp_path / "late").returncode == 0
    status = node.wait_for(lambda s: len(s["jobs"]) == 2
                           and s["series"][0]["state"] == "complete")
    assert _series(status, series)["revision"] == 2 and _series(status, series)["instances"] == 4
    assert [(j["revision"], j["state"], j["instances"]) for j in status["jobs"]] == [
        (1, "superseded", 3), (2, "complete", 4)]


def test_max_associations_refuses_one_more(make_node: Any) -> None:
    node = make_node(node={"max_associations": 1, "network_timeout": 3})
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(CTImageStorage, JPEG2000Lossless)
    # The start-up probe (a bare TCP connect) holds the one slot until pynetdicom gives up
    # waiting for its A-ASSOCIATE-RQ (network_timeout); wait for that.
    deadline = time.monotonic() + 30
    while not (held := ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)).is_established:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    try:
        refused = echoscu(node.port)
        assert refused.returncode != 0 and "Rejected" in refused.stdout
    finally:
        held.release()
    deadline = time.monotonic() + 30  # the slot frees once the node has closed its side
    while echoscu(node.port).returncode != 0:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    reasons = [a["reason"] for a in node.wait_for(
        lambda s: s["associations"]["by_outcome"].get("released", 0) >= 2
    )["associations"]["recent"]]
    assert "too-many-associations" in reasons
