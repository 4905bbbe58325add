"""SEG: validator, voxel-exact read-back (highdicom, dcmqi), OHIF's requirements, identity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from converters.measurements import Grid
from converters.results import EncodeOptions, PipelineMetadata, encode_results
from converters.seg import build_segmentation, segment_descriptions
from converters.vocabulary import LabelMapping, spineps_subregions, structure
from tests.results.conftest import PIPELINE, dciodvfy_errors, patient_resample

SEGIMAGE2ITKIMAGE = Path(sys.executable).parent / "segimage2itkimage"


def _expected(enc) -> np.ndarray:
    case = enc.case
    structures = case.mapping.structures_present(case.labelmap)
    return case.mapping.to_segment_numbers(case.labelmap, structures)


@pytest.mark.parametrize("kind", ["binary", "labelmap"])
def test_dciodvfy_reports_no_error(encoded, kind, tmp_path):
    seg = getattr(encoded, kind)[0]
    assert dciodvfy_errors(seg, tmp_path) == []


def highdicom_readback(seg: Dataset, datasets: list[Dataset], shape: tuple[int, ...],
                       folder: Path) -> np.ndarray:
    """The SEG written to ``folder`` and read by highdicom, as segment numbers on the grid
    of ``datasets``."""
    path = folder / "seg_hd.dcm"
    seg.save_as(path)
    volume = hd.seg.segread(path).get_volume(combine_segments=True)
    grid = Grid.from_datasets(datasets)
    return patient_resample(volume.array, volume.affine, grid.affine, shape)


def dcmqi_readback(seg: Dataset, datasets: list[Dataset], shape: tuple[int, ...],
                   folder: Path) -> np.ndarray:
    """The SEG written to ``folder`` and read by dcmqi's segimage2itkimage, as segment
    numbers on the grid of ``datasets`` (dcmqi covers only the slices holding segments);
    also checks dcmqi's voxel volume."""
    path = folder / "seg_dcmqi.dcm"
    seg.save_as(path)
    out = folder / "dcmqi_out"
    out.mkdir()
    subprocess.run([str(SEGIMAGE2ITKIMAGE), "--inputDICOM", str(path), "--outputDirectory",
                    str(out), "--outputType", "nrrd", "--mergeSegments"],
                   check=True, capture_output=True, timeout=120)
    (nrrd,) = [p for p in out.iterdir() if p.suffix == ".nrrd"]
    img = sitk.ReadImage(str(nrrd))
    d = np.array(img.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    sx, sy, sz = img.GetSpacing()
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = d[:, 2] * sz, d[:, 1] * sy, d[:, 0] * sx
    affine[:3, 3] = img.GetOrigin()
    grid = Grid.from_datasets(datasets)
    np.testing.assert_allclose(np.abs(np.linalg.det(affine[:3, :3])), grid.voxel_volume_mm3,
                               rtol=1e-5)
    return patient_resample(sitk.GetArrayFromImage(img), affine, grid.affine, shape)


@pytest.mark.parametrize("kind", ["binary", "labelmap"])
def test_highdicom_reads_back_exact_labels_and_geometry(encoded, kind, tmp_path):
    expected = _expected(encoded)
    back = highdicom_readback(getattr(encoded, kind)[0], encoded.case.datasets, expected.shape,
                              tmp_path)
    np.testing.assert_array_equal(back, expected)


@pytest.mark.parametrize("kind", ["binary", "labelmap"])
def test_dcmqi_reads_back_exact_labels_and_geometry(encoded, kind, tmp_path):
    seg = getattr(encoded, kind)[0]
    if seg.file_meta.TransferSyntaxUID.name.startswith("JPEG-LS"):
        pytest.skip("dcmqi 1.5.7 cannot decompress JPEG-LS SEG frames")
    expected = _expected(encoded)
    back = dcmqi_readback(seg, encoded.case.datasets, expected.shape, tmp_path)
    np.testing.assert_array_equal(back, expected)


@pytest.mark.parametrize("kind", ["binary", "labelmap"])
def test_ohif_requirements(encoded, kind):
    seg = getattr(encoded, kind)[0]
    sources = {ds.SOPInstanceUID: ds for ds in encoded.case.datasets}
    src0 = encoded.case.datasets[0]
    (ref_series,) = seg.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == src0.SeriesInstanceUID
    referenced = {i.ReferencedSOPInstanceUID for i in ref_series.ReferencedInstanceSequence}
    assert referenced == set(sources)
    assert seg.FrameOfReferenceUID == src0.FrameOfReferenceUID
    assert (seg.Rows, seg.Columns) == (src0.Rows, src0.Columns)
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient,
                               src0.ImageOrientationPatient, atol=1e-6)
    for item in seg.PerFrameFunctionalGroupsSequence:
        (derivation,) = item.DerivationImageSequence
        (source_image,) = derivation.SourceImageSequence
        src = sources[source_image.ReferencedSOPInstanceUID]
        np.testing.assert_allclose(item.PlanePositionSequence[0].ImagePositionPatient,
                                   src.ImagePositionPatient, atol=1e-4)
        if kind == "binary":
            assert item.SegmentIdentificationSequence[0].ReferencedSegmentNumber >= 1
    for desc in seg.SegmentSequence:
        if desc.SegmentNumber > 0:
            assert len(desc.RecommendedDisplayCIELabValue) == 3
            assert desc.TrackingUID and desc.SegmentAlgorithmName == PIPELINE.pipeline


def test_uids_are_stable_and_depend_on_source_pipeline_and_weights(encoded):
    case = encoded.case
    opts = EncodeOptions(sr=False, preview=False)
    again = encode_results(case.datasets, case.labelmap, case.mapping, PIPELINE, opts)[0]
    first = encoded.binary[0]
    assert (again.SOPInstanceUID, again.SeriesInstanceUID, again.SeriesNumber) == (
        first.SOPInstanceUID, first.SeriesInstanceUID, first.SeriesNumber)
    newer = PipelineMetadata(PIPELINE.pipeline, PIPELINE.model, "r20990101")
    other = encode_results(case.datasets, case.labelmap, case.mapping, newer, opts)[0]
    assert other.SeriesInstanceUID != first.SeriesInstanceUID
    assert encoded.labelmap[0].SOPInstanceUID != first.SOPInstanceUID
    echo2 = PipelineMetadata(PIPELINE.pipeline, PIPELINE.model, PIPELINE.weights_version,
                             stack="echo 2")
    assert encode_results(case.datasets, case.labelmap, case.mapping, echo2, opts)[0] \
        .SeriesInstanceUID != first.SeriesInstanceUID
    assert all(len(uid) <= 64 for uid in (first.SOPInstanceUID, first.SeriesInstanceUID))
    assert "totalspineseg" in first.SeriesDescription


def test_a_grown_series_gets_new_instance_uids_in_the_same_series(encoded):
    """A late instance changes the content, so it must change the SOP Instance UID (a PACS
    that keeps the first copy of a UID would otherwise keep the partial result)."""
    case = encoded.case
    opts = EncodeOptions(sr=False, preview=False)
    first = encoded.binary[0]
    partial = encode_results(case.datasets[:-1], case.labelmap[:-1], case.mapping, PIPELINE,
                             opts)[0]
    assert partial.SeriesInstanceUID == first.SeriesInstanceUID
    assert partial.SOPInstanceUID != first.SOPInstanceUID
    reordered = encode_results(case.datasets[::-1], case.labelmap[::-1], case.mapping, PIPELINE,
                               opts)[0]
    assert reordered.SOPInstanceUID == first.SOPInstanceUID


def test_overlapping_structure_sets_become_separate_series(encoded):
    case = encoded.case
    whole = np.where(case.labelmap > 0, 1, 0).astype(np.uint8)  # overlaps every structure
    outer = LabelMapping("outline", {1: "vertebra_L1"})
    out = encode_results(case.datasets, [case.labelmap, whole], [case.mapping, outer], PIPELINE,
                         EncodeOptions(sr=False, preview=False))
    assert len(out) == 2
    assert out[0].SeriesInstanceUID != out[1].SeriesInstanceUID
    assert out[0].SeriesNumber != out[1].SeriesNumber


def test_omit_empty_frames_option(encoded):
    case = encoded.case
    full = encode_results(case.datasets, case.labelmap, case.mapping, PIPELINE,
                          EncodeOptions(segmentation_type="LABELMAP", omit_empty_frames=False,
                                        sr=False, preview=False))[0]
    assert full.NumberOfFrames == len(case.datasets)


def test_laterality_and_level_are_coded():
    ds = [structure("transverse_process_left"), structure("body_L6")]
    src = Dataset()
    src.SeriesInstanceUID = "1.2.3"
    descs = segment_descriptions(ds, src, PIPELINE, "x")
    mod = descs[0].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence
    assert mod[0].CodeValue == "7771000"
    assert descs[1].AnatomicRegionSequence[0].CodingSchemeDesignator == "99DCMNODE"
    assert spineps_subregions().labels[43] == "transverse_process_left"


def test_errors_name_the_attribute(encoded):
    case = encoded.case
    bad = [ds.copy() for ds in case.datasets]
    bad[0].SeriesInstanceUID = ""
    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        build_segmentation(bad, case.labelmap, case.mapping, PIPELINE)
    with pytest.raises(ValueError, match="frames"):
        build_segmentation(case.datasets, case.labelmap[1:], case.mapping, PIPELINE)
