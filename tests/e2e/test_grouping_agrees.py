"""``process``, ``serve`` and ``rules test`` group one mixed folder identically.

One flat folder, files of five series interleaved, made from copies of the example CT:

(i)   a CT series without Study/Series Instance UID (empty on some files, absent on others);
(ii)  a CT localizer (ImageType ORIGINAL\\PRIMARY\\LOCALIZER), also without UIDs, its own
      series by its Series Number/Description/Time (same derived study as (i));
(iii) a Secondary Capture with pixels (SOP class 1.2.840.10008.5.1.4.1.1.7);
(iv)  a Basic Text SR (no pixels), with a Study Instance UID but no Series Instance UID;
(v)   a normal CT series (both UIDs present), in the study of (iii) and (iv).

The three ways in — :func:`dicomnode.run.batch.find_cases` (what ``process`` runs), a running
node fed by dcmtk's storescu, and ``rules test --json`` — all with calling AE ``STORESCU``, must
give the same set of (study UID, series UID, file count, kind) and, for the node, the job
outcome that kind implies.
"""

from __future__ import annotations

import copy
import itertools
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from tests.orthanc import Orthanc
from tests.service.conftest import AE_TITLE

CALLING = "STORESCU"
STORESCU = "/usr/bin/storescu"  # the venv's pynetdicom installs its own ``storescu``
SC_CLASS = UID("1.2.840.10008.5.1.4.1.1.7")
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

Triple = tuple[str, str, int, str]


def _shrunk(source: Dataset, shrink: int = 4) -> Dataset:
    """A copy with every ``shrink``-th pixel (spacing scaled), uncompressed, a new SOP UID."""
    ds = copy.deepcopy(source)
    pixels = source.pixel_array[::shrink, ::shrink].copy()
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [float(v) * shrink for v in source.PixelSpacing]
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def _basic_text_sr(study_uid: str, patient: Dataset) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = ""  # derived by the node, process and rules test alike
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 100, 1
    for keyword in ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber",
                    "StudyID"):
        setattr(ds, keyword, patient.get(keyword, ""))
    ds.ContentDate, ds.ContentTime = "20221208", "150000"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = \
        "18748-4", "LN", "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = Sequence([title])
    text = Dataset()
    text.RelationshipType, text.ValueType, text.TextValue = "CONTAINS", "TEXT", "No findings."
    finding = Dataset()
    finding.CodeValue, finding.CodingSchemeDesignator, finding.CodeMeaning = \
        "121071", "DCM", "Finding"
    text.ConceptNameCodeSequence = Sequence([finding])
    ds.ContentSequence = Sequence([text])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@dataclass
class Mixed:
    folder: Path
    files: int
    study: str  #: the Study Instance UID of (iii), (iv) and (v)
    ct_series: str  #: (v)'s Series Instance UID
    sc_series: str  #: (iii)'s


@pytest.fixture
def mixed(tmp_path: Path, ct_sources: list[Dataset]) -> Mixed:
    """The five series in one flat folder, their files interleaved."""
    sources = sorted(ct_sources, key=lambda ds: float(ds.ImagePositionPatient[2]))
    study, ct_series, sc_series = (str(generate_uid()) for _ in range(3))

    no_uids = []  # (i)
    for index, source in enumerate(sources):
        ds = _shrunk(source)
        if index % 2:  # absent on odd files, empty (as in the original) on even ones
            del ds.StudyInstanceUID, ds.SeriesInstanceUID
        else:
            ds.StudyInstanceUID = ds.SeriesInstanceUID = ""
        no_uids.append(ds)

    localizer = []  # (ii)
    for index, source in enumerate(sources[:2]):
        ds = _shrunk(source)
        ds.StudyInstanceUID = ds.SeriesInstanceUID = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesNumber, ds.SeriesDescription, ds.SeriesTime = 1, "Topogram 0.6 T20", "140001"
        ds.InstanceNumber = index + 1
        localizer.append(ds)

    normal = []  # (v)
    for index, source in enumerate(sources):
        ds = _shrunk(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, ct_series
        ds.PatientID, ds.PatientName = "GROUPING-1", "Grouping^Test"
        ds.SeriesNumber, ds.InstanceNumber = 2, index + 1
        normal.append(ds)

    sc = _shrunk(sources[0])  # (iii)
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = SC_CLASS
    sc.StudyInstanceUID, sc.SeriesInstanceUID = study, sc_series
    sc.PatientID, sc.PatientName = "GROUPING-1", "Grouping^Test"
    sc.Modality, sc.ConversionType, sc.ImageType = "OT", "WSD", ["DERIVED", "SECONDARY"]
    sc.SeriesNumber, sc.InstanceNumber = 99, 1

    sr = _basic_text_sr(study, normal[0])  # (iv)

    folder = tmp_path / "mixed"
    folder.mkdir()
    # Round robin over the series: no folder or file name tells them apart.
    rounds = itertools.zip_longest(no_uids, localizer, normal, [sc], [sr])
    ordered = [ds for group in rounds for ds in group if ds is not None]
    for index, ds in enumerate(ordered):
        ds.save_as(folder / f"{index:03d}.dcm", enforce_file_format=True)
    return Mixed(folder, len(ordered), study, ct_series, sc_series)


def _process_triples(folder: Path) -> set[Triple]:
    """What ``dicomnode process`` would do: its cases (volumes) and the series it skips."""
    from dicomnode.run.batch import find_cases

    cases, skipped = find_cases(folder, CALLING)
    triples = {(c.study_instance_uid, c.series_instance_uid, len(c.paths), "volume")
               for c in cases}
    # SkippedSeries carries no study UID; it is filled in from the other two views below.
    return triples | {("?", s.series_instance_uid, s.files, s.reason) for s in skipped}


def _rules_report(folder: Path, config: Path, capsys: pytest.CaptureFixture[str]
                  ) -> list[dict[str, Any]]:
    from dicomnode.cli import main

    capsys.readouterr()
    code = main(["rules", "test", str(folder), "--json", "--calling-ae-title", CALLING,
                 "--config", str(config)])
    assert code == 0
    return list(json.loads(capsys.readouterr().out))


def _all_final(status: dict[str, Any], series: int) -> bool:
    if len(status["series"]) < series or any(s["state"] != "complete" for s in status["series"]):
        return False
    live = [j for j in status["jobs"] if j["state"] != "superseded"]
    images = {s["series_instance_uid"] for s in status["series"] if s["is_image"]}
    return ({j["series_instance_uid"] for j in live} >= images
            and all(j["state"] in ("done", "failed", "dead", "ignored") for j in live))


def _serve_kind(series: dict[str, Any], jobs: list[dict[str, Any]]) -> str:
    """The kind the node gave a series, read from its job (or its lack of one)."""
    if not series["is_image"]:
        # kept and indexed, never a job (or a job ignored as not-an-image)
        assert all(j["error_kind"] == "not-an-image" for j in jobs), jobs
        return "not-an-image"
    (job,) = jobs
    if job["state"] == "ignored" and job["error_kind"] in ("not-an-image",
                                                           "not-a-volume-sop-class"):
        return str(job["error_kind"])
    return "volume"


def test_process_serve_and_rules_test_group_alike(
        mixed: Mixed, make_e2e_node: Any, orthanc: Orthanc,
        capsys: pytest.CaptureFixture[str]) -> None:
    node = make_e2e_node(orthanc)
    files = sorted(str(p) for p in mixed.folder.iterdir())
    assert len(files) == mixed.files == 44

    # rules test --json, with the node's own routing rules
    report = _rules_report(mixed.folder, node.config_path, capsys)
    rules = {(r["study_instance_uid"], r["series_instance_uid"], r["files"], r["kind"])
             for r in report}
    assert len(report) == len(rules) == 5, report
    by_uid = {r["series_instance_uid"]: r for r in report}
    derived = [r for r in report if r["study_instance_uid"] != mixed.study]
    (no_uids,) = [r for r in derived if r["files"] == 20]
    (localizer,) = [r for r in derived if r["files"] == 2]
    (sr,) = [r for r in report if r["kind"] == "not-an-image"]
    derived_study = no_uids["study_instance_uid"]
    assert derived_study.startswith("2.25.")
    assert rules == {
        (derived_study, no_uids["series_instance_uid"], 20, "volume"),          # (i)
        (derived_study, localizer["series_instance_uid"], 2, "volume"),         # (ii)
        (mixed.study, mixed.sc_series, 1, "not-a-volume-sop-class"),           # (iii)
        (mixed.study, sr["series_instance_uid"], 1, "not-an-image"),           # (iv)
        (mixed.study, mixed.ct_series, 20, "volume"),                          # (v)
    }
    assert [r["uid_synthesized"] for r in (no_uids, localizer, sr)] == [True] * 3
    assert not by_uid[mixed.ct_series]["uid_synthesized"]
    assert not by_uid[mixed.sc_series]["uid_synthesized"]
    assert sr["series_instance_uid"].startswith("2.25.")
    assert by_uid[mixed.ct_series]["matched_rules"] == no_uids["matched_rules"] == ["ct"]
    assert localizer["matched_rules"] == []

    # process: its cases and skipped series (SkippedSeries has no study UID: taken from the
    # series UID, which the check above tied to one study)
    study_of = {r["series_instance_uid"]: r["study_instance_uid"] for r in report}
    processed = {(study_of.get(uid, "?") if study == "?" else study, uid, n, kind)
                 for study, uid, n, kind in _process_triples(mixed.folder)}
    assert processed == rules

    # serve: storescu in one association, calling AE STORESCU
    sent = subprocess.run([STORESCU, "-aet", CALLING, "-aec", AE_TITLE, "127.0.0.1",
                           str(node.port), *files],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    assert sent.returncode == 0, sent.stdout
    status = node.wait_for(lambda s: _all_final(s, 5), timeout=300)
    assert len(status["series"]) == 5, status["series"]
    served: set[Triple] = set()
    for series in status["series"]:
        uid = series["series_instance_uid"]
        jobs = [j for j in status["jobs"]
                if j["series_instance_uid"] == uid and j["state"] != "superseded"]
        kind = _serve_kind(series, jobs)
        served.add((series["study_instance_uid"], uid, series["instances"], kind))
        expected = by_uid.get(uid)
        assert expected is not None, f"the node made a series rules test does not know: {uid}"
        assert series["uid_synthesized"] == expected["uid_synthesized"], (series, expected)
        # the job outcome the kind implies, and the rule rules test names
        if kind == "not-an-image":
            continue
        (job,) = jobs
        if kind == "not-a-volume-sop-class":
            assert (job["state"], job["error_kind"]) == ("ignored", kind), job
        elif expected["matched_rules"]:
            assert (job["state"], job["rule"]) == ("done", expected["matched_rules"][0]), job
        else:  # the localizer: a volume class, but the rule excludes LOCALIZER
            assert (job["state"], job["error_kind"]) == ("ignored", "no-rule-matches"), job
    assert served == rules
