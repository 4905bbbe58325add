"""``totalspineseg`` equals the official ``totalspineseg`` command, voxel for voxel.

Same inputs, same model folders (:mod:`tests.models_mr.tss_models`, official release layout,
installed into our model store from the release zips), official ``inference()`` run once over a
folder of all cases (what a user does; see :mod:`tests.models_mr.official` for the two harness
changes). The cases:

* ``phantom_ras`` — the lumbar phantom, int16, 1 mm, RAS: the full path through step 2 and both
  labellings, with a real T12–sacrum result;
* ``phantom_oblique`` — the same anatomy as float32, sagittal PIR voxel order, 0.5 × 1 × 1 mm and
  rotated 8° about the left-right axis: reorientation, anisotropic resampling (the 0.5 mm axis
  is the phantom repeated twice, so linear resampling to 1 mm reproduces it exactly and the
  labelling still has a clean spine), oblique geometry and the way back to the source grid;
* ``sct_t2`` (int16, 1 mm, PSR) and ``tptbox_t2w`` (uint16, 1.5 mm, PIR, middle 24 sagittal
  slices) — the shared real MR images. The hand-set networks answer to intensity bands, so on
  real anatomy they label scattered voxels: this checks the 1 mm resampling with integer
  truncation and step 1 on real data; whether the labelling then finds a landmark is
  data-dependent, and both sides must agree (the official tool writes no segmentation where ours
  raises ``NoSpineFound``).

Nothing differs: every comparison below is exact equality.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.models.pipelines.totalspineseg import (
    NoSpineFound,
    TotalSpineSeg,
    TotalSpineSegSteps,
)
from dicomnode.models.registry import REGISTRY, ModelStore
from dicomnode.models.runtime import NnUNetRuntime
from dicomnode.models.weights import install
from tests.models_mr import official, tss_models
from tests.shared_data import SHARED_DATA

DATA = SHARED_DATA
REAL = {
    "sct_t2": DATA / "sct-testing-spine-mr" / "t2" / "t2.nii.gz",
    "tptbox_t2w": DATA / "tptbox-spine-samples" / "sample_mri" / "sub-mri_label-6_T2w.nii.gz",
}
PHANTOMS = ("phantom_ras", "phantom_oblique")


def _phantom_cases() -> dict[str, nib.Nifti1Image]:
    data = tss_models.lumbar_phantom()
    ras = nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0]))
    ras.set_data_dtype(np.int16)
    fine = nib.Nifti1Image(np.repeat(data, 2, axis=0).astype(np.float32),
                           np.diag([0.5, 1.0, 1.0, 1.0]))
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                                nib.orientations.axcodes2ornt("PIR"))
    pir = fine.as_reoriented(transform)
    angle = np.deg2rad(8.0)
    rotation = np.eye(4)
    rotation[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    rotation[:3, 3] = [-12.5, 30.25, 7.0]
    oblique = nib.Nifti1Image(np.asanyarray(pir.dataobj), rotation @ pir.affine)
    oblique.set_data_dtype(np.float32)
    return {"phantom_ras": ras, "phantom_oblique": oblique}


@pytest.fixture(scope="module")
def tss(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model folders, our store, the input folder and the official outputs (one official run)."""
    work = tmp_path_factory.mktemp("tss")
    data_dir = tss_models.build_release(work / "official-data")
    store = ModelStore(work / "store")
    install(REGISTRY["totalspineseg"], store, tss_models.release_zips(data_dir, work / "zips"))
    cases = work / "cases"
    cases.mkdir()
    for name, image in _phantom_cases().items():
        nib.save(image, cases / f"{name}.nii.gz")
    shutil.copy(REAL["sct_t2"], cases / "sct_t2.nii.gz")
    # the TPTBox sample cropped to its middle 24 sagittal slices (left-right axis, 36 mm) to keep
    # the 1 mm resampled volume small; every other property (uint16, PIR, 1.5 mm) is kept
    sample = nib.load(REAL["tptbox_t2w"])
    nib.save(sample.slicer[:, :, 22:46], cases / "tptbox_t2w.nii.gz")
    result = official.run_totalspineseg(cases, work / "official", data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"store": store.root, "cases": cases, "official": work / "official"}


@pytest.fixture(scope="module")
def pipeline(tss: dict[str, Path]) -> TotalSpineSeg:
    return TotalSpineSeg(ModelStore(tss["store"]), NnUNetRuntime("cpu"))


def _official(tss: dict[str, Path], folder: str, case: str) -> np.ndarray | None:
    path = tss["official"] / folder / f"{case}.nii.gz"
    return np.asanyarray(nib.load(path).dataobj) if path.is_file() else None


@pytest.fixture(scope="module")
def runs(pipeline: TotalSpineSeg, tss: dict[str, Path]) -> dict[str, tuple]:
    """Our results per case (computed on first use): image, intermediates, labels or None."""
    cache: dict[str, tuple] = {}

    def run(case: str) -> tuple[sitk.Image, TotalSpineSegSteps, np.ndarray | None]:
        if case not in cache:
            # the case as the node holds it: a SimpleITK image in LPS
            image = sitk.ReadImage(str(tss["cases"] / f"{case}.nii.gz"))
            steps = TotalSpineSegSteps()
            try:
                labels = np.asanyarray(pipeline.segment(image, *pipeline.folders(), steps).dataobj)
            except NoSpineFound:
                labels = None
            cache[case] = (image, steps, labels)
        return cache[case]

    return run  # type: ignore[return-value]


class _Volume:
    def __init__(self, image: sitk.Image):
        self.image = image


def _on_source_grid(steps_seg: nib.Nifti1Image, image: sitk.Image) -> np.ndarray:
    from totalspineseg.utils.transform_seg2image import transform_seg2image

    from dicomnode.models.pipelines.nifti import to_nifti

    on_image = transform_seg2image(to_nifti(image), steps_seg)
    return np.asanyarray(on_image.dataobj).round().astype(np.uint8)


@pytest.mark.parametrize("case", [*PHANTOMS, *REAL])
def test_same_as_official_command(runs, tss: dict[str, Path], case: str) -> None:
    image, steps, ours = runs(case)
    # step 1's raw nnU-Net output, in the 1 mm canonical space (the official step1_raw folder)
    assert np.array_equal(np.asanyarray(steps.step1_raw.dataobj), _official(tss, "step1_raw", case))
    step1 = _official(tss, "step1_output", case)
    if steps.step1_output is None:
        assert step1 is None, "the official tool labelled step 1 where ours found no landmark"
        return
    assert np.array_equal(_on_source_grid(steps.step1_output, image), step1)
    if steps.step2_raw is not None:
        assert np.array_equal(np.asanyarray(steps.step2_raw.dataobj),
                              _official(tss, "step2_raw", case))
    final = _official(tss, "step2_output", case)
    if ours is None:
        assert final is None, "the official tool labelled step 2 where ours found no landmark"
        return
    assert final is not None
    assert np.array_equal(ours, final)  # both in the source file's voxel order


@pytest.mark.parametrize("case", PHANTOMS)
def test_phantom_is_labelled_as_a_lumbar_spine(pipeline: TotalSpineSeg, runs, tss: dict[str, Path],
                                               case: str) -> None:
    _, _, ours = runs(case)
    assert ours is not None
    present = set(np.unique(ours)) - {0}
    # cord, canal, T12, L1–L5, sacrum, discs T12-L1 … L4-L5, L5-S
    assert present == {1, 2, 32, 41, 42, 43, 44, 45, 50, 91, 92, 93, 94, 95, 100}
    result = pipeline.run(_Volume(sitk.ReadImage(str(tss["cases"] / f"{case}.nii.gz"))))
    labels = sitk.GetArrayFromImage(result.labelmap)
    names = {s.key for s in result.mapping.structures_present(labels, strict=True)}
    assert {"spinal_cord", "spinal_canal", "vertebra_T12", "vertebra_L5", "sacrum"} <= names
    assert result.metadata.settings["step1"]["checkpoint"] == "checkpoint_best.pth"


def test_step1_only_equals_official_step1_output(tss: dict[str, Path]) -> None:
    """``--step1``: the official step1_output, resampled to the source grid, is the result."""
    pipeline = TotalSpineSeg(ModelStore(tss["store"]), NnUNetRuntime("cpu"), step1_only=True)
    image = sitk.ReadImage(str(tss["cases"] / "phantom_oblique.nii.gz"))
    result = pipeline.run(_Volume(image))
    ours = sitk.GetArrayFromImage(result.labelmap).transpose(2, 1, 0)
    assert np.array_equal(ours, _official(tss, "step1_output", "phantom_oblique"))
    # step 1 numbers the discs but not the vertebrae (all 50), which the mapping leaves out
    assert {91, 100, 50} <= set(np.unique(ours))
    assert 50 not in result.mapping.labels
    assert result.metadata.settings["step1_only"] is True
