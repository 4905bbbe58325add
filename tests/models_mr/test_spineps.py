"""``spineps`` equals the official SPINEPS API (``spineps.segment``), voxel for voxel.

Same model folders (:mod:`tests.models_mr.spineps_models`: the release layout, installed into our
store), same images; the official side is ``spineps.segment(path, model_semantic=<folder>,
model_instance=<folder>, model_labeling=None, use_cpu=True, output_in_memory=True)`` — the
documented one-call API, loading the models from their folders and the image from its file.
Ours gets the image as the node holds it (SimpleITK, LPS) and keeps the models warm.

Cases: the shared TPTBox T2w sample (uint16, 1.5 mm, PIR; copied to a BIDS name without its
``label-6`` key, which SPINEPS's name check would otherwise refuse), and the same image resliced to
a non-canonical voxel order (ASL) with 3 mm sagittal slices (every other slice), which SPINEPS
rescales with its order-3 spline. The semantic net labels intensity bands of the smoothed
image, so both cases give vertebral arches, corpora and canal, several vertebra instances and the
whole instance/merging/post-processing path. There are no known differences: every comparison is
exact equality. No disc band is set (the discs of this sample are as dark as the background), so
the IVD/endplate numbering (100+X, 200+X) is exercised only as far as the official code runs it
with no discs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.models.pipelines.spineps import Spineps, SpinepsError
from dicomnode.models.registry import REGISTRY, ModelStore
from dicomnode.models.runtime import NnUNetRuntime
from dicomnode.models.weights import install
from tests.models_mr import spineps_models
from tests.models_mr.test_totalspineseg import DATA

pytestmark = pytest.mark.slow
SAMPLE = DATA / "tptbox-spine-samples" / "sample_mri" / "sub-mri_label-6_T2w.nii.gz"


class _Volume:
    def __init__(self, image: sitk.Image):
        self.image = image


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("spineps")
    release = spineps_models.build_release(work / "release")
    store = ModelStore(work / "store")
    install(REGISTRY["spineps-t2w"], store, [release])
    cases = work / "cases"
    cases.mkdir()
    shutil.copy(SAMPLE, cases / "sub-tptbox_T2w.nii.gz")
    sample = nib.load(SAMPLE)
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(sample.affine),
                                                nib.orientations.axcodes2ornt("ASL"))
    asl = sample.as_reoriented(transform)
    thick = asl.slicer[:, :, ::2]  # L axis: 3 mm sagittal slices
    nib.save(nib.Nifti1Image(np.asanyarray(thick.dataobj), thick.affine),
             cases / "sub-asl_T2w.nii.gz")
    axial = nib.Nifti1Image(np.zeros((40, 40, 8), np.int16), np.diag([0.5, 0.5, 4.0, 1.0]))
    nib.save(axial, cases / "sub-axial_T2w.nii.gz")
    return {"store": store.root, "cases": cases}


@pytest.fixture(scope="module")
def pipeline(setup: dict[str, Path]) -> Spineps:
    return Spineps(ModelStore(setup["store"]), NnUNetRuntime("cpu"), "spineps-t2w")


def _official(setup: dict[str, Path], name: str):  # noqa: ANN202
    import spineps

    installed = ModelStore(setup["store"]).require("spineps-t2w")
    return spineps.segment(setup["cases"] / name, model_semantic=installed.component("semantic"),
                           model_instance=installed.component("instance"), model_labeling=None,
                           use_cpu=True, output_in_memory=True)


@pytest.mark.parametrize("name", ["sub-tptbox_T2w.nii.gz", "sub-asl_T2w.nii.gz"])
def test_same_as_official_api(pipeline: Spineps, setup: dict[str, Path], name: str) -> None:
    image = sitk.ReadImage(str(setup["cases"] / name))
    result = pipeline.run(_Volume(image))
    official = _official(setup, name)
    assert official.success
    # NIfTI (i, j, k) of the file = SimpleITK (z, y, x) transposed
    ours_vert = sitk.GetArrayFromImage(result.labelmap).transpose(2, 1, 0)
    ours_spine = sitk.GetArrayFromImage(result.subregions.labelmap).transpose(2, 1, 0)
    assert np.array_equal(ours_vert, official.vertebra.get_seg_array())
    assert np.array_equal(ours_spine, official.semantic.get_seg_array())
    # non-trivial: several vertebra instances (top one = 2 without a labelling model), corpora
    assert len(set(np.unique(ours_vert)) - {0}) >= 3
    assert {49, 61} <= set(np.unique(ours_spine))
    # both label maps map onto the vocabulary, and go to separate SEG series
    assert [r.mapping.name for r in result.all] == ["vertebrae", "subregions"]
    for part in result.all:
        assert part.mapping.structures_present(sitk.GetArrayFromImage(part.labelmap), strict=True)
    assert result.metadata.settings["vertebra_numbering"].startswith("positional")


def test_axial_image_is_refused_like_the_official_api(pipeline: Spineps,
                                                      setup: dict[str, Path]) -> None:
    image = sitk.ReadImage(str(setup["cases"] / "sub-axial_T2w.nii.gz"))
    with pytest.raises(SpinepsError, match="sagittal or isotropic"):
        pipeline.run(_Volume(image))
    assert not _official(setup, "sub-axial_T2w.nii.gz").success


def test_mr_dicom_case_gives_two_seg_series_and_an_sr_that_dciodvfy_accepts(
        pipeline: Spineps, tmp_path: Path) -> None:
    """The shared T2w sample as an MR DICOM series → SPINEPS → SEG (instances), SEG
    (subregions), SR: each a valid DICOM object (zero ``dciodvfy`` errors)."""
    import converters
    from tests.results.conftest import dciodvfy_errors
    from tests.synthetic import single_frame_series

    sample = sitk.ReadImage(str(SAMPLE))
    stored = sitk.GetArrayFromImage(sample).astype(np.int64)
    series = single_frame_series(
        name="tptbox_t2w", modality="MR", shape=stored.shape, spacing=sample.GetSpacing(),
        direction=np.array(sample.GetDirection()).reshape(3, 3), origin=sample.GetOrigin(),
        stored=stored, bits_stored=12, image_type=("ORIGINAL", "PRIMARY", "M", "NORM"),
        window=(120.0, 300.0))
    volume = converters.load_series(series.datasets, keep_pixel_data=True)
    result = pipeline.run(volume)
    parts = result.all
    grids = [converters.to_source_grid(volume, part.labelmap) for part in parts]
    datasets = converters.encode_results(grids[0], [g.array for g in grids],
                                         [part.mapping for part in parts],
                                         result.metadata.for_encoders(), image=volume)
    segs = [ds for ds in datasets if ds.Modality == "SEG"]
    reports = [ds for ds in datasets if ds.Modality == "SR"]
    assert len(segs) == 2 and len({ds.SeriesInstanceUID for ds in segs}) == 2
    assert len(reports) == 1
    for ds in [*segs, *reports]:
        assert dciodvfy_errors(ds, tmp_path) == [], ds.Modality
