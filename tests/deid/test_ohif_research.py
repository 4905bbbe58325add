"""OHIF shows the node's SEG on the de-identified series: the research destination is the
viewer stack's Orthanc (the viewer tests' harness), which gets nothing but what the node sends
it, de-identified: the forwarded CT series and its SEG, SR and preview (random-weight model,
20 small slices)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from converters.deid import Deidentifier, Options
from dicomnode.viewer import ViewerStack
from tests.deid.test_research_routing import IDENTITY, SEG, _ct_series
from tests.e2e.conftest import jobs_in, make_e2e_node, model_store  # noqa: F401 - fixtures
from tests.service.conftest import ct_sources, storescu  # noqa: F401
from tests.viewer.browser import Ohif
from tests.viewer.conftest import _orthanc_dataset, _orthanc_get, ohif_dist, stack  # noqa: F401
from tests.viewer.expect import segment_table

pytestmark = pytest.mark.slow
KEY = "viewer-research-key"


def test_ohif_shows_the_seg_on_the_deidentified_series(
        make_e2e_node: Any, stack: ViewerStack, browser: Any,  # noqa: F811
        ct_sources: list[pydicom.Dataset], tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMNODE_TEST_DEID_KEY", KEY)  # serve inherits it
    research = {"type": "dicom", "ae_title": stack.ae_title, "host": "127.0.0.1",
                "port": stack.dicom_port, "deidentify": "research"}
    node = make_e2e_node(
        stack,
        routing={"rules": [{"name": "ct", "match": {"modality": ["CT"]},
                            "pipelines": ["vertebral-bodies-ct"], "destinations": ["pacs"],
                            "forward": ["pacs"], "forward_when": "done"}]},
        destinations={"pacs": research},
        deidentification={"key_env": "DICOMNODE_TEST_DEID_KEY", "profiles": {"research": {
            "retain_longitudinal_modified_dates": True, "clean_descriptors": True}}})
    uids = _ct_series(tmp_path / "ct", ct_sources, "spine ct for research", 20)
    sent = storescu(node.port, tmp_path / "ct")
    assert sent.returncode == 0, sent.stdout
    (job,) = node.wait_for(jobs_in(node, "done", "failed", "dead"), timeout=400)["jobs"]
    assert job["state"] == "done", job

    deid = Deidentifier(KEY.encode(), Options())
    source = pydicom.dcmread(next((tmp_path / "ct").iterdir()), stop_before_pixels=True)
    study_uid = deid.uid(str(source.StudyInstanceUID))
    (study,) = [s for s in _orthanc_get(stack, "/studies?expand")
                if s["MainDicomTags"]["StudyInstanceUID"] == study_uid]
    assert study["PatientMainDicomTags"]["PatientID"] == deid.pseudonym(
        IDENTITY["PatientID"]).patient_id
    segs = []
    for series in study["Series"]:
        info = _orthanc_get(stack, f"/series/{series}")
        if info["MainDicomTags"].get("Modality") == "SEG":
            segs.append(_orthanc_dataset(stack, info["Instances"][0]))
    (seg,) = segs
    assert seg.SOPClassUID == SEG
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == deid.uid(
        str(source.SeriesInstanceUID))
    assert {deid.uid(u) for u in uids} >= {
        str(i.ReferencedSOPInstanceUID)
        for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}

    expected = segment_table(seg)
    ohif = Ohif(browser, stack.url, tmp_path / "screenshots")
    try:
        ohif.open_study(study_uid)
        ohif.load("SEG")
        ohif.wait_for_labelmap()
        shown = ohif.wait_for_segments(len(expected))
        ohif.screenshot("research-seg")
        assert [s.label for s in shown] == [e.label for e in expected]
        for s, e in zip(shown, expected, strict=True):
            assert np.abs(np.subtract(s.rgb, e.rgb)).max() <= 3, (s, e)
        assert ohif.console_errors == [], ohif.console_errors
        assert ohif.failed_requests == [], ohif.failed_requests
    finally:
        ohif.screenshot("last")
        ohif.close()
