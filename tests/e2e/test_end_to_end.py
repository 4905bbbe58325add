"""storescu → ``dicomnode serve`` (real nnU-Net on the CPU) → Orthanc, through faults.

Every test runs the real chain: dcmtk sends, the node receives, assembles, routes, loads,
segments with nnunetv2 (a VertebralBodiesCT-shaped model with random weights), encodes SEG, SR
and preview with highdicom, and delivers them by C-STORE to a real Orthanc, which the tests read
back through its REST API.
"""

from __future__ import annotations

import concurrent.futures
import copy
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.e2e.conftest import jobs_in, orthanc_objects, wait_until
from tests.orthanc import Orthanc
from tests.service.conftest import storescu

SEG, SR, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", \
    "1.2.840.10008.5.1.4.1.1.7"


def _by_class(objects: list[pydicom.Dataset]) -> Counter[str]:
    return Counter(str(ds.SOPClassUID) for ds in objects)


def _write_series(folder: Path, sources: list[pydicom.Dataset], count: int, *,
                  drop: int | None = None, shrink: int = 4) -> str:
    """``count`` slices of the example CT as a new series (new UIDs), every ``shrink``-th pixel
    kept (PixelSpacing scaled to match) so CPU inference stays short; ``drop`` leaves a gap."""
    study, series = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for index, source in enumerate(sources[:count]):
        if index == drop:
            continue
        ds = copy.deepcopy(source)  # the fixture's datasets are shared between tests
        pixels = source.pixel_array[::shrink, ::shrink].copy()
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelSpacing = [float(v) * shrink for v in source.PixelSpacing]
        ds.PixelData = pixels.tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return series


@pytest.fixture
def small_ct_folder(tmp_path: Path, ct_sources: list[pydicom.Dataset]) -> Path:
    """The example CT series at 128 × 128 (a new series each test)."""
    _write_series(tmp_path / "small_ct", _ordered(ct_sources), len(ct_sources))
    return tmp_path / "small_ct"


def _ordered(sources: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    return sorted(sources, key=lambda ds: float(ds.ImagePositionPatient[2]))


def test_ct_series_comes_back_as_seg_sr_and_preview(make_e2e_node: Any, orthanc: Orthanc,
                                                     example_ct_folder: Path) -> None:
    node = make_e2e_node(orthanc)
    sent = storescu(node.port, example_ct_folder)
    assert sent.returncode == 0, sent.stdout
    status = node.wait_for(jobs_in(node, "done", "failed", "dead"), timeout=300)
    (job,) = status["jobs"]
    assert job["state"] == "done", job
    series_uid = status["series"][0]["series_instance_uid"]
    objects = orthanc_objects(orthanc)
    kinds = _by_class(objects)
    assert kinds[SEG] >= 1 and kinds[SR] == 1 and kinds[SC] >= 1, kinds
    for seg in (ds for ds in objects if ds.SOPClassUID == SEG):
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
        assert len(seg.SegmentSequence) >= 1
        frames = seg.PerFrameFunctionalGroupsSequence
        assert all(f.DerivationImageSequence for f in frames)
    sr = next(ds for ds in objects if ds.SOPClassUID == SR)
    assert sr.CurrentRequestedProcedureEvidenceSequence
    # intensities reached the report: mean attenuation in Hounsfield units
    assert "[hnsf'U]" in _units(sr)
    assert sorted((node.root / "var" / "jobs").glob("*/result.json")), "results stay on disk"
    # the encoders and the model runtime were imported in the background after start-up
    assert '"event": "node.warmed_up"' in node.logs[-1].read_text()


def test_warm_up_waits_while_an_association_is_open(make_e2e_node: Any,
                                                     orthanc: Orthanc) -> None:
    """The background imports hold the GIL, so they wait for an idle receiver."""
    import time

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    node = make_e2e_node(orthanc)
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    held = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert held.is_established
    try:
        time.sleep(5)
        assert '"node.warm_up_step"' not in node.logs[-1].read_text()
    finally:
        held.release()
    wait_until(lambda: '"node.warmed_up"' in node.logs[-1].read_text(), timeout=120)
    steps = [line for line in node.logs[-1].read_text().splitlines()
             if '"node.warm_up_step"' in line]
    assert len(steps) == 3


def _units(item: pydicom.Dataset) -> set[str]:
    """UCUM codes of every numeric measurement in an SR content tree."""
    found = set()
    for child in item.get("ContentSequence", []):
        for value in child.get("MeasuredValueSequence", []):
            found.add(str(value.MeasurementUnitsCodeSequence[0].CodeValue))
        found |= _units(child)
    return found


def test_destination_down_then_back_delivers_once(make_e2e_node: Any, orthanc: Orthanc,
                                                  small_ct_folder: Path) -> None:
    orthanc.stop()
    node = make_e2e_node(orthanc)
    assert storescu(node.port, small_ct_folder).returncode == 0
    status = node.wait_for(lambda s: s["jobs"] and s["jobs"][0]["state"] == "dispatching"
                           and s["jobs"][0].get("deliveries")
                           and s["jobs"][0]["deliveries"][0]["attempts"] >= 2, timeout=300)
    delivery = status["jobs"][0]["deliveries"][0]
    assert delivery["error_kind"] == "unreachable"
    orthanc.start()
    status = node.wait_for(jobs_in(node, "done", "dead"), timeout=60)
    assert status["jobs"][0]["state"] == "done"
    objects = orthanc_objects(orthanc)
    assert len(objects) == len({ds.SOPInstanceUID for ds in objects})
    assert _by_class(objects)[SR] == 1


@pytest.mark.parametrize("moment", ["receiving", "segmenting", "dispatching"])
def test_kill_9_then_restart_delivers_every_result_exactly_once(
        make_e2e_node: Any, orthanc: Orthanc, small_ct_folder: Path, moment: str) -> None:
    if moment == "dispatching":
        orthanc.stop()  # hold the job in dispatching
    # Receiving: a quiet period longer than the restart, so the half-sent series is not
    # completed (and failed for its gaps) while the node is down. Otherwise 3 s: a loaded
    # machine can pause storescu for over a second mid-series.
    assembly = {"series_timeout": 15.0 if moment == "receiving" else 3.0}
    node = make_e2e_node(orthanc, assembly=assembly)
    if moment == "receiving":
        # one association per file, slowly, so the kill lands mid-series
        files = sorted(small_ct_folder.iterdir())
        for path in files[:8]:
            assert storescu(node.port, path).returncode == 0
        node.kill9()
        node.start()
        # the sender retries the whole series: duplicates are acknowledged, not re-stored
        sent = storescu(node.port, small_ct_folder)
        assert sent.returncode == 0, sent.stdout[-3000:]
    else:
        assert storescu(node.port, small_ct_folder).returncode == 0
        node.wait_for(lambda s: s["jobs"] and s["jobs"][0]["state"] == moment, timeout=300,
                      interval=0.05)
        node.kill9()
        if moment == "dispatching":
            orthanc.start()
        node.start()
    status = node.wait_for(lambda s: s["series"][0]["state"] == "complete"
                           and len(_latest_jobs(s)) == 1
                           and jobs_in(node, "done", "failed", "dead", "superseded")(s),
                           timeout=300)
    (latest,) = _latest_jobs(status).values()
    assert latest["state"] == "done", status["jobs"]
    # a revision that completed early (the sender paused) is superseded, or finished first
    early = [j for j in status["jobs"] if j["id"] != latest["id"]]
    assert all(j["state"] in ("superseded", "done") for j in early), status["jobs"]
    assert status["series"][0]["instances"] == len(list(small_ct_folder.iterdir()))
    objects = orthanc_objects(orthanc)
    uids = [ds.SOPInstanceUID for ds in objects]
    assert len(uids) == len(set(uids))  # exactly once: a re-send carries the same UIDs
    kinds = _by_class(objects)
    assert kinds[SR] == 1 + sum(j["state"] == "done" for j in early) and kinds[SEG] >= 1


def test_series_that_cannot_load_fails_and_the_next_still_runs(
        make_e2e_node: Any, orthanc: Orthanc, ct_sources: list[pydicom.Dataset],
        tmp_path: Path) -> None:
    node = make_e2e_node(orthanc)
    sources = _ordered(ct_sources)
    gap = _write_series(tmp_path / "gap", sources, 12, drop=6)
    good = _write_series(tmp_path / "good", sources, 12)
    assert storescu(node.port, tmp_path / "gap").returncode == 0
    assert storescu(node.port, tmp_path / "good").returncode == 0
    status = node.wait_for(lambda s: len(s["jobs"]) == 2 and jobs_in(node, "done", "failed")(s),
                           timeout=300)
    by_series = {j["series_instance_uid"]: j for j in status["jobs"]}
    assert by_series[gap]["state"] == "failed"
    assert "missing" in (by_series[gap]["error_message"] or "")
    assert by_series[gap]["error_kind"]
    assert by_series[good]["state"] == "done"


def test_twenty_series_from_four_senders_all_delivered(
        make_e2e_node: Any, orthanc: Orthanc, ct_sources: list[pydicom.Dataset],
        tmp_path: Path) -> None:
    node = make_e2e_node(orthanc)
    sources = _ordered(ct_sources)
    folders = []
    for sender in range(4):
        folder = tmp_path / f"sender{sender}"
        for index in range(5):
            _write_series(folder / f"s{index}", sources, 6)
        folders.append(folder)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda f: storescu(node.port, f, calling=f"SEND{f.name[-1]}"),
                                folders))
    assert all(r.returncode == 0 for r in results)
    # On a loaded machine a sender can pause past the 1 s series timeout, so a series may
    # complete early and then grow: wait for the job of each series' last revision.
    status = node.wait_for(lambda s: len(s["series"]) == 20
                           and all(s_["state"] == "complete" for s_ in s["series"])
                           and len(_latest_jobs(s)) == 20
                           and jobs_in(node, "done", "failed", "dead", "superseded")(s),
                           timeout=900, interval=1)
    assert {s["instances"] for s in status["series"]} == {6}
    latest = _latest_jobs(status)
    assert [j["state"] for j in latest.values()] == ["done"] * 20, status["jobs"]
    early = [j for j in status["jobs"] if j["id"] not in {x["id"] for x in latest.values()}]
    # an early revision is superseded while queued, or was already running and finished
    assert all(j["state"] in ("superseded", "done") for j in early), early
    objects = orthanc_objects(orthanc)
    srs = [ds for ds in objects if ds.SOPClassUID == SR]
    assert len({ds.SeriesInstanceUID for ds in srs}) == 20
    assert len(srs) == 20 + sum(j["state"] == "done" for j in early)
    segs = [ds for ds in objects if ds.SOPClassUID == SEG]
    # every source series has a SEG over all six of its slices
    full = {ds.ReferencedSeriesSequence[0].SeriesInstanceUID for ds in segs
            if len(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 6}
    assert full == set(latest)


def _latest_jobs(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Series Instance UID → the job of the series' current revision (once it exists)."""
    revision = {s["series_instance_uid"]: s["revision"] for s in status["series"]}
    return {j["series_instance_uid"]: j for j in status["jobs"]
            if j["revision"] == revision.get(j["series_instance_uid"])}
