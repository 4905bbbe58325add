"""SEG objects as OHIF 3.13.2 reads them (issue #13, SEG part).

1. Native Pixel Data without the even-length pad byte. OHIF fetches the whole instance and
   parses it with dcmjs' ``AsyncDicomReader.readUncompressed`` (mirrored by
   :func:`dcmjs_accepts`): a multi-frame 1-bit Pixel Data must be exactly
   ceil(Rows × Columns × frames / 8) bytes long, and a whole-byte one a multiple of the frame
   count, so the pad byte PS3.5 adds to an odd length makes it reject the object ("The
   calculated length 154025 does not match the actual length 154026"); its per-frame fallback
   then fails on Orthanc for 1-bit frames whose width is not a multiple of 8.
2. LABELMAP Segment Sequence order. OHIF indexes its colour table by the *position* of an
   item in the Segment Sequence plus one, not by Segment Number; the background item that
   C.8.20.2.3.3 requires (pixel value 0 is encoded, so it is described) therefore goes last.
"""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedCTImageStorage

from converters.results import EncodeOptions
from converters.seg import build_segmentation
from converters.vocabulary import LabelMapping
from tests import synthetic
from tests.results.conftest import PIPELINE, dciodvfy_errors
from tests.results.test_seg import dcmqi_readback, highdicom_readback

MAPPING = LabelMapping("odd", {1: "vertebra_L1", 2: "vertebra_L2"})
L1_L2 = {1: range(2, 7), 2: range(5, 12)}  # L1 on slices 2..6, L2 on 5..11
L1_L2_LONG = {1: range(2, 7), 2: range(5, 13)}  # L2 on 5..12: 11 labelled slices

BINARY = EncodeOptions(sr=False, preview=False)
BINARY_ALL = EncodeOptions(omit_empty_frames=False, sr=False, preview=False)
LABELMAP = EncodeOptions(segmentation_type="LABELMAP", labelmap_compression="NONE",
                         sr=False, preview=False)
LABELMAP_ALL = EncodeOptions(segmentation_type="LABELMAP", labelmap_compression="NONE",
                             omit_empty_frames=False, sr=False, preview=False)

#: name: (shape (slices, Rows, Columns), label slices, options, frames written, Bits Allocated).
#: 101 × 122 = 12 322 ≡ 2 (mod 16): 12 BINARY frames pack into 18 483 bytes and 50 into
#: 77 013; 101 × 123 = 12 423 is odd, so an odd number of 8-bit frames is an odd length.
CASES = {
    # 12 frames + the empty L1 frame of slice 1 (next to L1's slices): 20 024 bytes
    "binary": ((25, 101, 122), L1_L2, BINARY, 13, 1),
    # 50 frames − the two empty L1 frames farthest from L1 (slices 24, 23): 73 932 bytes
    "binary_all_frames": ((25, 101, 122), L1_L2, BINARY_ALL, 48, 1),
    # 11 labelled slices (2..12) + the empty slice 1: 12 × 12 423 bytes
    "labelmap": ((25, 101, 123), L1_L2_LONG, LABELMAP, 12, 8),
    # every slice is kept: 25 frames of 16 bits
    "labelmap_all_frames": ((25, 101, 123), L1_L2, LABELMAP_ALL, 25, 16),
    # every slice occupied, none to add: 16 bits
    "labelmap_no_empty_slice": ((25, 101, 123), {1: range(0, 25)}, LABELMAP, 25, 16),
}


def labelled_series(shape: tuple[int, int, int],
                    slices: dict[int, range]) -> tuple[list[Dataset], np.ndarray]:
    """An axial CT of ``shape`` and a label map with value ``v`` in a box on ``slices[v]``
    (boxes side by side, background on every slice)."""
    datasets = synthetic.axial_ct(shape=shape).datasets
    labels = np.zeros(shape, np.uint8)
    for value, where in slices.items():
        labels[list(where), 10 + 30 * (value - 1):35 + 30 * (value - 1), 20:70] = value
    return datasets, labels


def dcmjs_accepts(ds: Dataset) -> bool:
    """dcmjs ``AsyncDicomReader.readPixelData`` as bundled in OHIF 3.13.2: encapsulated
    Pixel Data (undefined length) goes to ``readCompressed``, which checks no length; native
    Pixel Data of more than one frame to ``readUncompressed``, which does."""
    frames = int(ds.get("NumberOfFrames", 1))
    length = len(ds.PixelData)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated or frames <= 1:
        return True
    bits_per_frame = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated
    if bits_per_frame % 8:
        # readUncompressedBitFrame: totalBytes = ceil(bitsPerFrame × frames / 8) === length
        return ds.BitsAllocated == 1 and -(-bits_per_frame * frames // 8) == length
    return length % frames == 0  # "Invalid frame length"


def _built(name: str) -> tuple[Dataset, list[Dataset], np.ndarray]:
    shape, slices, options, _, _ = CASES[name]
    datasets, labels = labelled_series(shape, slices)
    built = build_segmentation(datasets, labels, MAPPING, PIPELINE, options)
    assert built is not None
    return built[0], datasets, labels


def _written(seg: Dataset, folder) -> Dataset:
    path = folder / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


@pytest.mark.parametrize("name", list(CASES))
def test_native_pixel_data_needs_no_pad_byte(name, tmp_path):
    seg, _, _ = _built(name)
    _, _, _, frames, bits = CASES[name]
    back = _written(seg, tmp_path)
    assert (back.NumberOfFrames, back.BitsAllocated) == (frames, bits)
    assert (back.BitsStored, back.HighBit) == (bits, bits - 1)
    packed = -(-back.Rows * back.Columns * frames * bits // 8)
    assert packed % 2 == 0
    assert len(back.PixelData) == packed  # as written: no pad byte
    assert dcmjs_accepts(back)


@pytest.mark.parametrize("name", list(CASES))
def test_odd_matrix_objects_pass_dciodvfy_and_read_back_exactly(name, tmp_path):
    seg, datasets, labels = _built(name)
    assert dciodvfy_errors(seg, tmp_path) == []
    structures = MAPPING.structures_present(labels)
    expected = MAPPING.to_segment_numbers(labels, structures)
    np.testing.assert_array_equal(
        highdicom_readback(seg, datasets, expected.shape, tmp_path), expected)
    np.testing.assert_array_equal(
        dcmqi_readback(seg, datasets, expected.shape, tmp_path), expected)


def _frames(seg: Dataset, datasets: list[Dataset]) -> list[tuple[int, int]]:
    """(segment number, source slice) of each frame, from its functional groups, after
    checking that they agree with each other (derivation source, plane position)."""
    index = {ds.SOPInstanceUID: k for k, ds in enumerate(datasets)}
    out = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        (derivation,) = item.DerivationImageSequence
        (source,) = derivation.SourceImageSequence
        k = index[source.ReferencedSOPInstanceUID]
        np.testing.assert_allclose(item.PlanePositionSequence[0].ImagePositionPatient,
                                   datasets[k].ImagePositionPatient, atol=1e-4)
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber \
            if "SegmentIdentificationSequence" in item else 0
        out.append((int(number), k))
    return out


def test_binary_adds_the_empty_frame_next_to_its_segment(tmp_path):
    seg, datasets, labels = _built("binary")
    frames = _frames(seg, datasets)
    present = {(int(v), k) for k in range(labels.shape[0]) for v in np.unique(labels[k]) if v}
    (extra,) = set(frames) - present
    assert extra == (1, 1)  # L1 at slice 1: next to L1's first slice
    # segment-major, slices in dimension order: the extra frame sits where highdicom puts
    # an L1 frame of slice 1, and its dimension index values continue the others'
    indices = [tuple(i.FrameContentSequence[0].DimensionIndexValues)
               for i in seg.PerFrameFunctionalGroupsSequence]
    assert indices == sorted(indices)
    assert len(set(indices)) == len(indices)
    assert [s for s, _ in frames] == sorted(s for s, _ in frames)
    back = _written(seg, tmp_path)
    i = frames.index(extra)
    assert not back.pixel_array[i].any()


def test_binary_all_frames_leaves_out_the_frames_farthest_from_their_segment():
    seg, datasets, labels = _built("binary_all_frames")
    frames = set(_frames(seg, datasets))
    every = {(s, k) for s in (1, 2) for k in range(labels.shape[0])}
    assert every - frames == {(1, 23), (1, 24)}  # the end of the stack, after L1's slices


def test_labelmap_adds_the_empty_slice_next_to_the_labels():
    seg, datasets, _ = _built("labelmap")
    assert sorted(k for _, k in _frames(seg, datasets)) == list(range(1, 13))


@pytest.mark.parametrize("options", [BINARY, BINARY_ALL], ids=["binary", "binary_all_frames"])
def test_multiframe_source_frames_are_found_by_frame_number(options, tmp_path):
    """A shuffled Enhanced CT source: the frames added or left out are matched through
    Referenced Frame Number; every frame holds exactly its segment on its source frame."""
    base = synthetic.axial_ct(name="odd_enhanced_base", shape=(25, 101, 122))
    order = [int(i) for i in np.random.default_rng(5).permutation(25)]
    enhanced = synthetic._enhanced("odd_enhanced", "CT", EnhancedCTImageStorage, base,
                                   {"PlaneOrientationSequence", "PixelMeasuresSequence"},
                                   None, order)
    _, by_slice = labelled_series((25, 101, 122), L1_L2)
    labels = by_slice[order]  # label map frame i covers source frame i + 1
    built = build_segmentation(enhanced.datasets, labels, MAPPING, PIPELINE, options)
    assert built is not None
    assert dciodvfy_errors(built[0], tmp_path) == []
    back = _written(built[0], tmp_path)
    assert len(back.PixelData) % 2 == 0 and dcmjs_accepts(back)
    for i, item in enumerate(back.PerFrameFunctionalGroupsSequence):
        frame = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        np.testing.assert_array_equal(back.pixel_array[i], labels[frame - 1] == number)


def test_binary_without_any_empty_frame_keeps_the_pad_byte(tmp_path, caplog):
    """BINARY is 1 bit by definition and every (segment, slice) frame holds voxels: no frame
    can be added or left out, so the odd length stays (with PS3.5's pad byte) and the
    writer says so."""
    datasets, labels = labelled_series((25, 101, 122), {1: range(0, 25)})
    with caplog.at_level(logging.WARNING, logger="converters.seg"):
        built = build_segmentation(datasets, labels, MAPPING, PIPELINE, BINARY)
    assert built is not None
    back = _written(built[0], tmp_path)
    assert back.NumberOfFrames == 25
    assert len(back.PixelData) == -(-12322 * 25 // 8) + 1
    assert back.PixelData[-1] == 0  # PS3.5's NUL, not highdicom's "0"
    assert "pad byte" in caplog.text


@pytest.mark.parametrize("kind", ["binary", "labelmap"])
def test_ohif_reader_accepts_the_pixel_data(encoded, kind, tmp_path):
    assert dcmjs_accepts(_written(getattr(encoded, kind)[0], tmp_path))


def test_labelmap_segment_sequence_position_is_the_pixel_value(encoded):
    """OHIF 3.13.2 takes the colour of pixel value ``i`` from Segment Sequence item ``i``
    (1-based position), so items 1..N are segments 1..N; the background item that every
    encoded value 0 needs (PS3.3 C.8.20.2.3.3) is described last, as Pixel Padding Value 0
    names it."""
    seg = encoded.labelmap[0]
    structures = encoded.case.mapping.structures_present(encoded.case.labelmap)
    items = list(seg.SegmentSequence)
    assert [d.SegmentNumber for d in items] == [*range(1, len(structures) + 1), 0]
    for desc, s in zip(items, structures, strict=False):
        assert desc.SegmentLabel == s.label
    background = items[-1]
    assert seg.PixelPaddingValue == background.SegmentNumber == 0
    code = background.SegmentedPropertyTypeCodeSequence[0]
    assert (code.CodingSchemeDesignator, code.CodeValue) == ("DCM", "125040")
