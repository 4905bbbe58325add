"""SEG objects as OHIF 3.13.2 reads them (issue #13, SEG part).

1. Native Pixel Data without the even-length pad byte. OHIF fetches the whole instance and
   parses it with dcmjs' ``AsyncDicomReader.readUncompressed`` (mirrored by
   :func:`dcmjs_accepts`): a multi-frame 1-bit Pixel Data must be exactly
   ceil(Rows × Columns × frames / 8) bytes long, and a whole-byte one a multiple of the frame
   count, so the pad byte PS3.5 adds to an odd length makes it reject the object ("The
   calculated length 154025 does not match the actual length 154026"); its per-frame fallback
   then fails on Orthanc for 1-bit frames whose width is not a multiple of 8.
2. BINARY frames that start on a byte. cornerstone's dicom-image-loader (bundled in OHIF) finds
   1-bit frame i at byte offset i × Rows × Columns / 8 and indexes the byte array with it
   (mirrored by :func:`cornerstone_frames`): a fractional offset reads ``undefined``, so every
   frame that does not start on a byte is drawn empty. Where Rows × Columns is not a multiple
   of 8, the frames that hold segment pixels sit at multiples of k = 8 / gcd(Rows × Columns, 8)
   with all-zero frames between them.
3. LABELMAP Segment Sequence order. OHIF indexes its colour table by the *position* of an
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

from converters.measurements import Grid
from converters.results import EncodeOptions
from converters.seg import build_segmentation
from converters.seg.framing import (
    aligned_order,
    frame_bits,
    misaligned_frames,
    segment_number,
)
from converters.vocabulary import LabelMapping
from tests import synthetic
from tests.results.conftest import PIPELINE, dciodvfy_errors, patient_resample
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
#: 77 013, and 1-bit frame i starts on a byte only for i ≡ 0 (mod 4); 101 × 120 = 12 120 is a
#: multiple of 8 (every frame starts on a byte) but 12 120 / 8 is odd; 101 × 123 = 12 423 is
#: odd, so an odd number of 8-bit frames is an odd length.
CASES = {
    # 12 frames at 0, 4, .., 44 and 33 empty frames between them: 69 312 bytes
    "binary": ((25, 101, 122), L1_L2, BINARY, 45, 1),
    # 13 frames + the empty L1 frame of slice 1 (next to L1's slices): 21 210 bytes
    "binary_byte_frames": ((25, 101, 120), L1_L2_LONG, BINARY, 14, 1),
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


def cornerstone_frames(ds: Dataset) -> np.ndarray:
    """The frames of a native 1-bit SEG as OHIF 3.13.2 decodes them: cornerstone's
    dicom-image-loader ``getUncompressedImageFrame`` (``frameOffset = pixelDataOffset +
    frameIndex * pixelsPerFrame * 0.125``) and ``unpackBinaryFrame`` (pixel i is bit i % 8 of
    ``byteArray[Math.floor(i / 8) + frameOffset]``). The Pixel Data value starts at an integer
    offset, so a frame's offset is fractional exactly when frameIndex × pixelsPerFrame is not a
    multiple of 8; a typed array indexed with a fraction (or past its end) gives ``undefined``,
    and ``undefined & (1 << bit)`` is 0: such a frame is all background."""
    rows, columns, frames = ds.Rows, ds.Columns, int(ds.NumberOfFrames)
    assert ds.BitsAllocated == 1 and not ds.file_meta.TransferSyntaxUID.is_encapsulated
    pixels = rows * columns
    byte_array = np.frombuffer(ds.PixelData, np.uint8)
    i = np.arange(pixels)
    out = np.zeros((frames, pixels), np.uint8)
    for index in range(frames):
        frame_offset = index * pixels * 0.125  # a JavaScript number, as in the loader
        if frame_offset != int(frame_offset):
            continue  # byteArray[x.5] is undefined: every pixel 0
        position = i // 8 + int(frame_offset)
        inside = position < byte_array.size
        byte = np.zeros(pixels, np.uint8)
        byte[inside] = byte_array[position[inside]]
        out[index] = (byte >> (i % 8).astype(np.uint8)) & 1
    return out.reshape(frames, rows, columns)


def ohif_label_map(seg: Dataset, datasets: list[Dataset]) -> np.ndarray:
    """Segment numbers on the source slices, from :func:`cornerstone_frames` placed by each
    frame's Derivation Image Sequence and Segment Identification (as OHIF places them)."""
    index = {ds.SOPInstanceUID: k for k, ds in enumerate(datasets)}
    frames = cornerstone_frames(seg)
    out = np.zeros((len(datasets), seg.Rows, seg.Columns), np.uint8)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        k = index[source.ReferencedSOPInstanceUID]
        number = segment_number(seg, item)
        assert not (out[k][frame > 0]).any(), "segments overlap"
        out[k][frame > 0] = number
    return out


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
        out.append((segment_number(seg, item) if seg.SegmentationType == "BINARY" else 0, k))
    return out


def test_binary_adds_the_empty_frame_next_to_its_segment(tmp_path):
    seg, datasets, labels = _built("binary_byte_frames")
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


#: Rows × Columns not a multiple of 8: name: (shape, label slices, k = 8 / gcd(R × C, 8)).
ODD_MATRICES = {
    "101x122": ((25, 101, 122), L1_L2, 4),  # 12 322 ≡ 2 (mod 8)
    "84x117": ((25, 84, 117), L1_L2, 2),  # 9 828 ≡ 4 (mod 8)
    # 12 221 is odd: 7 empty frames after each of the first 11 labelled ones, 77 of the 88
    # empty pairs of 50 slices
    "101x121": ((50, 101, 121), L1_L2, 8),
}
OMIT = {"omit_empty_frames": BINARY, "all_frames": BINARY_ALL}


def _odd(name: str, omit: str) -> tuple[Dataset, list[Dataset], np.ndarray, np.ndarray]:
    shape, slices, _ = ODD_MATRICES[name]
    datasets, labels = labelled_series(shape, slices)
    built = build_segmentation(datasets, labels, MAPPING, PIPELINE, OMIT[omit])
    assert built is not None
    expected = MAPPING.to_segment_numbers(labels, MAPPING.structures_present(labels))
    return built[0], datasets, labels, expected


@pytest.mark.parametrize("omit", list(OMIT))
@pytest.mark.parametrize("name", list(ODD_MATRICES))
def test_cornerstone_draws_every_frame_of_odd_matrices(name, omit, tmp_path):
    """Every frame holding a segment pixel starts on a byte, so OHIF's decoder reads the
    label map back exactly; the Pixel Data still needs no pad byte."""
    seg, datasets, _, expected = _odd(name, omit)
    k = ODD_MATRICES[name][2]
    back = _written(seg, tmp_path)
    np.testing.assert_array_equal(ohif_label_map(back, datasets), expected)
    holds = cornerstone_frames(back).reshape(int(back.NumberOfFrames), -1).any(axis=1)
    assert holds.sum() == len({(v, s) for s, f in enumerate(expected) for v in np.unique(f) if v})
    assert all(i % k == 0 for i in np.flatnonzero(holds))
    assert misaligned_frames(back) == []
    packed = -(-back.Rows * back.Columns * int(back.NumberOfFrames) // 8)
    assert len(back.PixelData) == packed and packed % 2 == 0 and dcmjs_accepts(back)
    assert "DimensionOrganizationType" not in back  # two segments: highdicom sets none


@pytest.mark.parametrize("name", list(ODD_MATRICES))
def test_odd_matrices_add_the_fewest_empty_frames(name):
    """With omit_empty_frames: k − 1 empty frames between two labelled ones, then as few as
    make the length even; every frame holds exactly its segment on its source slice."""
    seg, datasets, labels, _ = _odd(name, "omit_empty_frames")
    k = ODD_MATRICES[name][2]
    frames = _frames(seg, datasets)
    labelled = {(int(v), s) for s in range(labels.shape[0]) for v in np.unique(labels[s]) if v}
    assert len(set(frames)) == len(frames) and labelled <= set(frames)
    fewest = k * (len(labelled) - 1) + 1
    while -(-seg.Rows * seg.Columns * fewest // 8) % 2:
        fewest += 1
    assert seg.NumberOfFrames == fewest
    bits = frame_bits(seg)
    for i, (number, s) in enumerate(frames):
        np.testing.assert_array_equal(bits[i].reshape(seg.Rows, seg.Columns),
                                      labels[s] == number)
        assert bits[i].any() == (i % k == 0 and i < k * len(labelled))


@pytest.mark.parametrize("omit", list(OMIT))
@pytest.mark.parametrize("name", list(ODD_MATRICES))
def test_reordered_frames_pass_dciodvfy_and_read_back_exactly(name, omit, tmp_path):
    seg, datasets, _, expected = _odd(name, omit)
    assert dciodvfy_errors(seg, tmp_path) == []
    np.testing.assert_array_equal(
        highdicom_readback(seg, datasets, expected.shape, tmp_path), expected)
    np.testing.assert_array_equal(
        dcmqi_readback(seg, datasets, expected.shape, tmp_path), expected)


def test_reordered_single_segment_drops_the_3d_dimension_organization(tmp_path):
    """highdicom writes Dimension Organization Type 3D for one segment on equally spaced
    slices, when its frames in their stored order are such a stack; the reordered frames are
    not, so the (Type 3) attribute goes. On a byte-aligned matrix the order and the 3D stay."""
    one = {1: range(2, 7)}
    datasets, labels = labelled_series((25, 84, 117), one)
    seg = build_segmentation(datasets, labels, MAPPING, PIPELINE, BINARY)[0]
    assert "DimensionOrganizationType" not in seg
    assert dciodvfy_errors(seg, tmp_path) == []
    assert [s for _, s in _frames(seg, datasets)] != sorted(s for _, s in _frames(seg, datasets))
    np.testing.assert_array_equal(ohif_label_map(_written(seg, tmp_path), datasets),
                                  labels.astype(np.uint8))
    np.testing.assert_array_equal(highdicom_readback(seg, datasets, labels.shape, tmp_path),
                                  labels)
    datasets, labels = labelled_series((25, 101, 120), {1: range(2, 8)})  # 6 frames: even
    aligned = build_segmentation(datasets, labels, MAPPING, PIPELINE, BINARY)[0]
    assert aligned.DimensionOrganizationType == "3D"
    slices = [s for _, s in _frames(aligned, datasets)]
    assert slices in (list(range(2, 8)), list(range(7, 1, -1)))


def test_reordered_seg_keeps_highdicoms_frame_index_in_step(tmp_path):
    """The returned highdicom object answers from the new frame order."""
    seg, datasets, _, expected = _odd("84x117", "omit_empty_frames")
    volume = seg.get_volume(combine_segments=True)
    written = highdicom_readback(seg, datasets, expected.shape, tmp_path)
    grid = Grid.from_datasets(datasets)
    np.testing.assert_array_equal(
        patient_resample(volume.array, volume.affine, grid.affine, expected.shape), written)


SPINE = LabelMapping("spine", {j + 1: name for j, name in enumerate(
    [f"vertebra_T{i}" for i in range(1, 13)] + [f"vertebra_L{i}" for i in range(1, 6)]
    + ["vertebra_C5", "vertebra_C6", "vertebra_C7"])})


def test_realistic_spine_on_101x122_is_drawn_whole(tmp_path):
    """20 vertebrae of 10 slices each (neighbours share 5) on a 101 × 122 × 112 CT: the 200
    labelled frames go to 0, 4, .., 796 with 597 empty frames between them."""
    shape = (112, 101, 122)
    datasets = synthetic.axial_ct(name="spine_101x122", shape=shape).datasets
    labels = np.zeros(shape, np.uint8)
    for j in range(20):
        row = 20 + 30 * (j % 2)
        labels[5 * j:5 * j + 10, row:row + 28, 30:70] = j + 1
    seg = build_segmentation(datasets, labels, SPINE, PIPELINE, BINARY)[0]
    expected = SPINE.to_segment_numbers(labels, SPINE.structures_present(labels))
    assert seg.NumberOfFrames == 4 * 199 + 1
    back = _written(seg, tmp_path)
    assert dcmjs_accepts(back) and misaligned_frames(back) == []
    np.testing.assert_array_equal(ohif_label_map(back, datasets), expected)
    assert dciodvfy_errors(seg, tmp_path) == []
    np.testing.assert_array_equal(highdicom_readback(seg, datasets, shape, tmp_path), expected)


def test_dense_binary_odd_matrix_warns_that_ohif_draws_frames_empty(tmp_path, caplog):
    """101 × 121 with 25 slices: 12 labelled frames would need 77 empty ones between them but
    only 38 empty pairs exist, so the frames stay as the pad-byte rule leaves them and the
    writer says which frames OHIF draws empty; the SEG itself stays exact."""
    datasets, labels = labelled_series((25, 101, 121), L1_L2)
    with caplog.at_level(logging.WARNING, logger="converters.seg"):
        seg = build_segmentation(datasets, labels, MAPPING, PIPELINE, BINARY)[0]
    assert "cornerstone" in caplog.text and "empty" in caplog.text
    assert seg.NumberOfFrames == 12
    expected = MAPPING.to_segment_numbers(labels, MAPPING.structures_present(labels))
    drawn = ohif_label_map(_written(seg, tmp_path), datasets)
    assert (drawn != expected).any()  # the limitation, as the mirror shows it
    missing = misaligned_frames(seg)
    assert missing == [i for i in range(12) if i % 8]
    assert dcmjs_accepts(_written(seg, tmp_path))
    np.testing.assert_array_equal(
        highdicom_readback(seg, datasets, expected.shape, tmp_path), expected)


def test_aligned_order_puts_every_frame_with_pixels_on_a_multiple_of_k():
    rng = np.random.default_rng(3)
    for _ in range(2000):
        n, k = int(rng.integers(1, 40)), int(rng.choice([2, 4, 8]))
        holds = (rng.random(n) < 0.3).tolist()
        real = sum(holds)
        if n - real < (k - 1) * max(real - 1, 0):
            with pytest.raises(ValueError):
                aligned_order(holds, k)
            continue
        order = aligned_order(holds, k)
        assert sorted(order) == list(range(n))
        assert all(i % k == 0 for i, j in enumerate(order) if holds[j])
        assert [j for j in order if holds[j]] == [j for j in range(n) if holds[j]]


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
