"""converters/seg/fast.py builds the same SEG as highdicom's path, element by element."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from converters.results import EncodeOptions, PipelineMetadata
from converters.seg import fast, writer
from converters.vocabulary import totalspineseg
from tests import synthetic

PIPELINE = PipelineMetadata("totalspineseg", "Dataset102_TotalSpineSeg_step2", "r20241115")
MAPPING = totalspineseg()
#: set anew by each build (time, random UIDs)
VOLATILE = {"InstanceCreationTime", "InstanceCreationDate", "ContentTime", "ContentDate",
            "ContributionDateTime", "DimensionOrganizationUID", "PixelData"}
SERIES = {
    "axial": synthetic.axial_ct, "sagittal": synthetic.sagittal_ct,
    "oblique": synthetic.oblique_ct, "flipped": synthetic.flipped_ct,
    "shuffled": lambda **kw: synthetic.shuffled(synthetic.axial_ct(**kw)),
    "irregular": lambda **kw: synthetic.axial_ct(positions=[0, 1, 2.5, 3, 4, 6, 7, 8, 9.5],
                                                 **kw),
}
OPTIONS = [EncodeOptions(segmentation_type="BINARY", omit_empty_frames=omit) for omit in
           (True, False)] + [EncodeOptions(segmentation_type="LABELMAP",
                                           labelmap_compression=c, omit_empty_frames=omit)
                             for c in ("RLE", "NONE") for omit in (True, False)]


def _labels(shape: tuple[int, int, int], kind: str) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    n, rows, columns = shape
    if kind == "one":
        labels[1:3, 2:5, 3:9] = 11
    elif kind == "sparse":  # empty frames, labels at the edges of the frame
        labels[2, 0:3, 0:4] = 11
        labels[n - 1, rows - 2:, columns - 3:] = 1
        labels[4, 5, 7] = 2
    else:
        values = np.array([0, 1, 2, 11, 12, 21, 63, 0, 0, 0], np.uint8)
        labels[:] = values[np.random.default_rng(0).integers(0, len(values), shape)]
        labels[0] = 0
    return labels


def _stripped(ds: pydicom.Dataset) -> pydicom.Dataset:
    for elem in list(ds):
        if elem.keyword in VOLATILE:
            del ds[elem.tag]
        elif elem.VR == "SQ":
            for item in elem.value:
                _stripped(item)
    return ds


def _build(monkeypatch, fast_path, datasets, labels, options):
    monkeypatch.setattr(writer, "FAST_PATH", fast_path)
    seg = writer.build_segmentation(datasets, labels, MAPPING, PIPELINE, options)[0]
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return seg, pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("series", sorted(SERIES))
@pytest.mark.parametrize("kind", ["one", "sparse", "random"])
def test_fast_path_writes_what_highdicom_writes(monkeypatch, series, kind):
    datasets = SERIES[series](shape=(9, 16, 24)).datasets
    labels = _labels((len(datasets), 16, 24), kind)
    for options in OPTIONS:
        seg, fast_written = _build(monkeypatch, True, datasets, labels, options)
        assert isinstance(seg, fast.FastSegmentation)
        _, highdicom_written = _build(monkeypatch, False, datasets, labels, options)
        np.testing.assert_array_equal(fast_written.pixel_array, highdicom_written.pixel_array)
        if not highdicom_written.file_meta.TransferSyntaxUID.is_encapsulated:
            assert fast_written.PixelData == highdicom_written.PixelData
        assert _stripped(fast_written) == _stripped(highdicom_written), options


@pytest.mark.parametrize("name", ["ct", "mr_sagittal", "mr_oblique"])
def test_fast_path_writes_what_highdicom_writes_for_the_encoder_cases(monkeypatch, name):
    """The real CT (its own position strings, patient and study attributes) and the MR."""
    from tests.results.conftest import CASES

    case = CASES[name]()
    compared = 0
    for options in OPTIONS:
        if not fast.applies(case.datasets, case.labelmap.shape,
                            options.segmentation_type == "BINARY",
                            writer._LABELMAP_SYNTAX[options.labelmap_compression]
                            if options.segmentation_type == "LABELMAP"
                            else pydicom.uid.ExplicitVRLittleEndian, len(case.mapping.labels)):
            continue
        seg, fast_written = _build_case(monkeypatch, True, case, options)
        assert isinstance(seg, fast.FastSegmentation)
        _, highdicom_written = _build_case(monkeypatch, False, case, options)
        np.testing.assert_array_equal(fast_written.pixel_array, highdicom_written.pixel_array)
        assert _stripped(fast_written) == _stripped(highdicom_written), options
        compared += 1
    assert compared


def _build_case(monkeypatch, fast_path, case, options):
    monkeypatch.setattr(writer, "FAST_PATH", fast_path)
    seg = writer.build_segmentation(case.datasets, case.labelmap, case.mapping, PIPELINE,
                                    options)[0]
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return seg, pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def test_fast_segmentation_indexes_its_frames_when_asked(tmp_path):
    datasets = synthetic.axial_ct(shape=(9, 16, 24)).datasets
    labels = _labels((len(datasets), 16, 24), "random")
    seg = writer.build_segmentation(datasets, labels, MAPPING, PIPELINE)[0]
    assert isinstance(seg, fast.FastSegmentation)
    volume = seg.get_volume(combine_segments=True)  # highdicom's index, built now
    expected = MAPPING.to_segment_numbers(labels, MAPPING.structures_present(labels))
    assert sorted(np.unique(volume.array)) == sorted(np.unique(expected))
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)  # after the raw parse too
    back = pydicom.dcmread(tmp_path / "seg.dcm")
    assert len(back.PerFrameFunctionalGroupsSequence) == int(back.NumberOfFrames)


def test_fast_path_applies_to_whole_even_frames_only():
    datasets = synthetic.axial_ct(shape=(9, 16, 24)).datasets
    binary = EncodeOptions().segmentation_type == "BINARY"
    syntax = pydicom.uid.ExplicitVRLittleEndian
    assert fast.applies(datasets, (9, 16, 24), binary, syntax, 49)
    assert not fast.applies(datasets, (9, 12, 18), binary, syntax, 49)  # 27-byte frames
    assert not fast.applies(datasets, (9, 16, 24), False, pydicom.uid.JPEGLSLossless, 49)


def test_fast_segmentation_encodes_in_implicit_vr_too(monkeypatch):
    """A C-STORE may negotiate Implicit VR Little Endian: the pre-encoded items are then
    parsed and encoded anew."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    datasets = synthetic.axial_ct(shape=(9, 16, 24)).datasets
    labels = _labels((len(datasets), 16, 24), "random")
    seg, explicit = _build(monkeypatch, True, datasets, labels, OPTIONS[0])
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, seg)
    implicit = pydicom.dcmread(io.BytesIO(fp.getvalue()), force=True)
    implicit.file_meta = explicit.file_meta
    implicit.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    assert implicit.PerFrameFunctionalGroupsSequence == explicit.PerFrameFunctionalGroupsSequence
    assert implicit.ReferencedSeriesSequence == explicit.ReferencedSeriesSequence
    assert implicit.PixelData == explicit.PixelData
