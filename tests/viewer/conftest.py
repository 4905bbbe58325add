"""The viewer tests' world: the local viewer stack (Orthanc + OHIF behind nginx, as
``dicomnode viewer start`` runs it) on free ports, random-weight models for the three pipelines,
and real nodes that segment the test series and deliver their SEG, SR and preview to that
Orthanc. Built once per session; every test then opens one result in Chromium.
"""

from __future__ import annotations

import io
import os
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from dicomnode.viewer import ViewerStack, install_ohif
from tests.models.train_small_model import TRAINED_CT_MODEL
from tests.orthanc import ORTHANC, free_port
from tests.service.conftest import AE_TITLE, RunningNode, storescu
from tests.viewer.browser import CHROMIUM

REPO = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

_missing = [what for what, ok in (("Orthanc", ORTHANC), ("chromium", Path(CHROMIUM).exists()),
                                  ("nginx", Path(NGINX).exists())) if not ok]
if _missing:
    if os.environ.get("CI"):
        raise RuntimeError(f"viewer tests need {', '.join(_missing)} (deploy/setup.sh installs "
                           "them)")
    pytest.skip(f"viewer tests need {', '.join(_missing)}", allow_module_level=True)


@dataclass
class Case:
    """One series sent to a node, and where its results are in Orthanc."""

    name: str
    study_uid: str
    source_series_uid: str
    #: Orthanc's parsed copies of the results: SEG datasets (by SeriesDescription), the SR.
    segs: dict[str, pydicom.Dataset]
    sr: pydicom.Dataset | None


@pytest.fixture(scope="session")
def ohif_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OHIF's dist/: the one the setup installed, else installed now (npm pack)."""
    installed = REPO / "var" / "viewer" / "ohif"
    if (installed / "index.html").exists():
        return installed
    return install_ohif(tmp_path_factory.mktemp("ohif") / "dist")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, ohif_dist: Path) -> Iterator[ViewerStack]:
    stack = ViewerStack(folder=tmp_path_factory.mktemp("viewer-stack"), ohif_dist=ohif_dist,
                        viewer_port=free_port(), dicom_port=free_port(), http_port=free_port())
    stack.start()
    yield stack
    stack.stop()


# --- models and series -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """In one store: vertebral-bodies-ct-m with the trained test weights (it finds L1–L5 in
    TotalSegmentator's example CT, so the CT SEGs hold real vertebrae), totalspineseg and
    spineps-t2w with their hand-set test networks (structures on their phantom / sample)."""
    from dicomnode.models.registry import REGISTRY, ModelStore
    from dicomnode.models.weights import install
    from tests.models_mr import spineps_models, tss_models

    work = tmp_path_factory.mktemp("viewer-models")
    store = ModelStore(work / "store")
    install(REGISTRY["vertebral-bodies-ct-m"], store, [TRAINED_CT_MODEL])
    tss = tss_models.build_release(work / "tss")
    install(REGISTRY["totalspineseg"], store, tss_models.release_zips(tss, work / "tss-zips"))
    install(REGISTRY["spineps-t2w"], store, [spineps_models.build_release(work / "spineps")])
    return store.root


def _renamed(datasets: list[pydicom.Dataset], tag: str) -> list[pydicom.Dataset]:
    """Copies of a series in a study of its own: new Study, Series, SOP Instance and Frame of
    Reference UIDs (the synthetic series all share one study and frame of reference)."""
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    out = []
    for ds in datasets:
        ds = ds.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesDescription = f"{ds.get('SeriesDescription', '')} {tag}".strip()
        out.append(ds)
    return out


def _write(datasets: list[pydicom.Dataset], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(datasets):
        ds.save_as(folder / f"{i:04d}.dcm", enforce_file_format=True)
    return folder


def _mr_series(name: str, image: sitk.Image, description: str) -> list[pydicom.Dataset]:
    from tests import synthetic

    stored = sitk.GetArrayFromImage(image).astype(np.int64)
    series = synthetic.single_frame_series(
        name=name, modality="MR", shape=stored.shape, spacing=image.GetSpacing(),
        direction=np.array(image.GetDirection()).reshape(3, 3), origin=image.GetOrigin(),
        stored=np.clip(stored, 0, 4095), bits_stored=12,
        image_type=("ORIGINAL", "PRIMARY", "M", "NORM"), window=(300.0, 600.0))
    for ds in series.datasets:
        ds.SeriesDescription = description
    return list(series.datasets)


def _ct_series(name: str, image: sitk.Image) -> list[pydicom.Dataset]:
    """A CT image (HU) as an axial single-frame series (12-bit stored, intercept −1024)."""
    from tests import synthetic

    image = sitk.DICOMOrient(image, "LPS")
    stored = np.clip(sitk.GetArrayFromImage(image).astype(np.int64) + 1024, 0, 4095)
    return list(synthetic.single_frame_series(
        name=name, shape=stored.shape, spacing=tuple(image.GetSpacing()),
        direction=np.asarray(image.GetDirection()).reshape(3, 3), origin=image.GetOrigin(),
        stored=stored).datasets)


def series_folders(work: Path) -> dict[str, Path]:
    """The test series, one study each:

    * ``ct-odd``: TotalSegmentator's example CT as it is: 112 axial slices of 101×122 at 3 mm
      (122 columns: 1-bit frames neither fill whole bytes nor start on byte boundaries);
    * ``ct-512``: the same CT resampled to 512×512 in-plane;
    * ``ct-labelmap``: ``ct-odd`` again (another study), for the LABELMAP node;
    * ``mr-tss``: TotalSpineSeg's test phantom (T12–sacrum) as an axial MR series;
    * ``mr-spineps``: the TPTBox T2w sample as a sagittal MR series.
    """
    from tests.models.train_small_model import CT
    from tests.models_mr.test_spineps import SAMPLE
    from tests.models_mr.tss_models import lumbar_phantom

    ct = sitk.ReadImage(str(CT))
    size, spacing = ct.GetSize(), ct.GetSpacing()
    fine = [spacing[0] * size[0] / 512, spacing[1] * size[1] / 512, spacing[2]]
    ct_512 = sitk.Resample(ct, [512, 512, size[2]], sitk.Transform(), sitk.sitkLinear,
                           ct.GetOrigin(), fine, ct.GetDirection(), -1024.0, sitk.sitkInt16)
    odd = _ct_series("viewer_ct_odd", ct)
    folders = {
        "ct-odd": _write(_renamed(odd, "odd"), work / "ct-odd"),
        "ct-512": _write(_renamed(_ct_series("viewer_ct_512", ct_512), "512"), work / "ct-512"),
        "ct-labelmap": _write(_renamed(odd, "labelmap"), work / "ct-labelmap"),
    }
    phantom = work / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(lumbar_phantom(), np.eye(4)), phantom)
    folders["mr-tss"] = _write(_renamed(_mr_series(
        "viewer_tss", sitk.ReadImage(str(phantom)), "tss phantom"), "tss"), work / "mr-tss")
    folders["mr-spineps"] = _write(_renamed(_mr_series(
        "viewer_spineps", sitk.ReadImage(str(SAMPLE)), "sag T2w"), "spineps"),
        work / "mr-spineps")
    return folders


# --- nodes that deliver to the stack's Orthanc ----------------------------------------------

def _node_config(port: int, stack: ViewerStack, models: Path, seg_type: str) -> dict[str, Any]:
    return {
        "node": {"ae_title": AE_TITLE, "host": "127.0.0.1", "port": port},
        "storage": {"path": "var", "min_free": "1 MB"},
        # long enough that a loaded machine never splits a series that storescu sends in one go
        "assembly": {"series_timeout": 5.0},
        "web": {"port": free_port()},  # the console's default 8080 would be shared
        "models": {"path": str(models), "device": "cpu", "threads": 2},
        "jobs": {"workers": 2, "poll_interval": 0.2},
        "routing": {"mode": "first", "rules": [
            {"name": "ct", "match": {"modality": ["CT"]}, "pipelines": ["vertebral-bodies-ct"],
             "destinations": ["pacs"]},
            {"name": "spineps", "match": {"modality": ["MR"], "orientation": ["sagittal"]},
             "pipelines": ["spineps"], "destinations": ["pacs"]},
            {"name": "tss", "match": {"modality": ["MR"]}, "pipelines": ["totalspineseg"],
             "destinations": ["pacs"]}]},
        "destinations": {"pacs": {"type": "dicom", "ae_title": stack.ae_title,
                                  "host": "127.0.0.1", "port": stack.dicom_port}},
        "dispatch": {"initial_backoff": 0.5, "max_backoff": 1.0},
        "results": {"seg_type": seg_type},
    }


def _orthanc_get(stack: ViewerStack, path: str) -> Any:
    import json

    with urllib.request.urlopen(stack.orthanc_url + path, timeout=30) as response:
        return json.loads(response.read())


def _orthanc_dataset(stack: ViewerStack, instance: str) -> pydicom.Dataset:
    with urllib.request.urlopen(f"{stack.orthanc_url}/instances/{instance}/file",
                                timeout=60) as response:
        return pydicom.dcmread(io.BytesIO(response.read()))


def _results_in_orthanc(stack: ViewerStack, study_uid: str) -> tuple[dict[str, Any], Any]:
    studies = [s for s in _orthanc_get(stack, "/studies?expand")
               if s["MainDicomTags"]["StudyInstanceUID"] == study_uid]
    assert len(studies) == 1, f"study {study_uid} not in Orthanc"
    segs: dict[str, pydicom.Dataset] = {}
    sr = None
    for series in studies[0]["Series"]:
        info = _orthanc_get(stack, f"/series/{series}")
        modality = info["MainDicomTags"].get("Modality")
        if modality in ("SEG", "SR"):
            assert len(info["Instances"]) == 1, info
            ds = _orthanc_dataset(stack, info["Instances"][0])
            if modality == "SEG":
                segs[str(ds.SeriesDescription)] = ds
            else:
                sr = ds
    return segs, sr


def _all_final(count: int) -> Callable[[dict[str, Any]], bool]:
    """A ``wait_for`` predicate: ``count`` jobs, each done, failed or dead."""
    return lambda s: len(s["jobs"]) >= count and all(
        j["state"] in ("done", "failed", "dead") for j in s["jobs"])


@pytest.fixture(scope="session")
def cases(tmp_path_factory: pytest.TempPathFactory, stack: ViewerStack,
          model_store: Path) -> dict[str, Case]:
    """Every test series segmented by a real node and delivered to the stack's Orthanc; the
    LABELMAP case is the example CT again (another study) through a node with
    ``results.seg_type: labelmap``."""
    work = tmp_path_factory.mktemp("viewer-cases")
    folders = series_folders(work / "series")
    runs = {"binary": [n for n in folders if n != "ct-labelmap"], "labelmap": ["ct-labelmap"]}
    for seg_type, names in runs.items():
        port = free_port()
        root = work / f"node-{seg_type}"
        root.mkdir()
        node = RunningNode(root, _node_config(port, stack, model_store, seg_type), port)
        node.start()
        try:
            for name in names:
                # the images go to the PACS and to the node, as a scanner would send them
                for target, called in ((stack.dicom_port, stack.ae_title), (port, AE_TITLE)):
                    sent = storescu(target, folders[name], calling="MODALITY", called=called)
                    assert sent.returncode == 0, sent.stdout[-2000:]
            final = node.wait_for(_all_final(len(names)), timeout=900, interval=1.0)
            failed = [j for j in final["jobs"] if j["state"] != "done"]
            assert not failed, failed
        except Exception:
            print(node.status())
            raise
        finally:
            node.stop()
    out = {}
    for name, folder in folders.items():
        first = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
        segs, sr = _results_in_orthanc(stack, str(first.StudyInstanceUID))
        out[name] = Case(name, str(first.StudyInstanceUID), str(first.SeriesInstanceUID), segs,
                         sr)
    return out
