"""The contract other parts code against: ``to_source_grid`` output goes straight into
highdicom's Segmentation, and the SEG's frames land on the right source frames; a real
sagittal T2w MR (tptbox sample, written as DICOM) loads back to the same image and agrees
with dcm2niix."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from converters import load_series, to_source_grid
from tests import synthetic as S
from tests.volume.test_reference_tools import DATA, assert_geometry, dcm2niix


def _segment() -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=1, segment_label="vertebra",
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Vertebra,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)


def _seg_from(volume, labels: np.ndarray) -> hd.seg.Segmentation:
    grid = to_source_grid(volume, labels)
    return hd.seg.Segmentation(
        source_images=grid.datasets, pixel_array=grid.array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment()], series_instance_uid=hd.UID(), series_number=99,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="dicomnode-tests",
        manufacturer_model_name="test", software_versions="0", device_serial_number="0")


# enhanced_ct, not enhanced_mr: highdicom 0.28 reads PixelMeasures and PlaneOrientation of a
# multi-frame source from its Shared Functional Groups only (enhanced_mr has them per frame).
@pytest.mark.parametrize("build", [lambda: S.shuffled(S.oblique_ct()), S.enhanced_ct,
                                   S.gantry_tilt], ids=["shuffled_oblique", "enhanced_ct",
                                                        "gantry_tilt"])
def test_highdicom_segmentation_from_source_grid(build) -> None:
    syn = build()
    volume = load_series(syn.datasets)
    labels = np.zeros(volume.image.GetSize()[::-1], np.uint8)
    labels[2:4, 3:7, 4:9] = 1  # a block, so the frames that carry it are known
    seg = _seg_from(volume, labels)
    grid = to_source_grid(volume, labels)
    carrying = {(f.sop_instance_uid, f.frame_number)
                for f, plane in zip(grid.frames, grid.array, strict=True) if plane.any()}
    referenced = set()
    for item in seg.PerFrameFunctionalGroupsSequence:
        derivation = item.DerivationImageSequence[0].SourceImageSequence[0]
        number = (int(derivation.ReferencedFrameNumber)
                  if "ReferencedFrameNumber" in derivation else None)
        referenced.add((derivation.ReferencedSOPInstanceUID, number))
    assert referenced == carrying
    # the SEG's own plane positions are those of the source frames that carry the block
    positions = {tuple(np.round(item.PlanePositionSequence[0].ImagePositionPatient, 3))
                 for item in seg.PerFrameFunctionalGroupsSequence}
    index = {ref: k for k, ref in enumerate(volume.sources)}
    expected = {tuple(np.round(volume.positions[index[ref]], 3)) for ref in grid.frames
                if (ref.sop_instance_uid, ref.frame_number) in carrying}
    assert positions == expected


@pytest.fixture(scope="module")
def t2w_series(tmp_path_factory) -> tuple[sitk.Image, list[Path]]:
    """The tptbox sagittal T2w crop (PIR, uint16) written as an MR DICOM series."""
    nifti = DATA / "tptbox-spine-samples" / "sample_mri" / "sub-mri_label-6_T2w.nii.gz"
    if not nifti.exists():
        pytest.skip(f"shared test data missing: {nifti}")
    image = sitk.ReadImage(str(nifti))
    stored = sitk.GetArrayFromImage(image).astype(np.int64)
    syn = S.single_frame_series(
        name="tptbox_t2w", shape=stored.shape, spacing=image.GetSpacing(),
        direction=np.asarray(image.GetDirection()).reshape(3, 3), origin=image.GetOrigin(),
        modality="MR", bits_stored=16, stored=stored, window=None)
    folder = tmp_path_factory.mktemp("t2w")
    return image, S.write_series(S.shuffled(syn), folder)


def test_real_t2w_mr_round_trips_through_dicom(t2w_series) -> None:
    image, paths = t2w_series
    volume = load_series(paths)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    assert np.linalg.det(direction) > 0  # right-handed, so it is the loader's own frame
    np.testing.assert_allclose(volume.image.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(volume.image.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(volume.image.GetSpacing(), image.GetSpacing(), atol=1e-6)
    assert volume.image.GetPixelIDTypeAsString() == "16-bit unsigned integer"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume.image),
                                  sitk.GetArrayFromImage(image).astype(np.uint16))


def test_real_t2w_mr_agrees_with_dcm2niix(t2w_series, tmp_path: Path) -> None:
    _, paths = t2w_series
    volume = load_series(paths)
    subprocess.run([dcm2niix(), "-z", "n", "-b", "n", "-f", "ref", "-o", str(tmp_path),
                    str(paths[0].parent)], check=True, capture_output=True, timeout=60)
    ref = assert_geometry(volume.image, sitk.ReadImage(str(tmp_path / "ref.nii")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume.image).astype(np.float64),
                                  sitk.GetArrayFromImage(ref).astype(np.float64))


def test_highdicom_segmentation_on_real_ct_headers_only() -> None:
    """Files read by the loader keep headers only; that, and the de-identified UIDs that
    live only in the file meta, is enough for highdicom."""
    from tests.volume.test_reference_tools import TOTALSEG, need

    volume = load_series(need(TOTALSEG))
    assert all("PixelData" not in ds for ds in volume.datasets)
    labels = np.zeros(volume.image.GetSize()[::-1], np.uint8)
    labels[5:8, 200:300, 200:300] = 1
    seg = _seg_from(volume, labels)
    assert seg.NumberOfFrames == 3
    referenced = {item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                  for item in seg.PerFrameFunctionalGroupsSequence}
    assert referenced == {volume.sources[k].sop_instance_uid for k in (5, 6, 7)}
