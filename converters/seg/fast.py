"""Fast path of :func:`converters.seg.writer.build_segmentation` for single-frame sources.

highdicom 0.28 spends its time per (source frame, segment) pair (comparing whole frames,
building each Per-frame Functional Groups item as pydicom Datasets), and pydicom then spends
as long again writing those thousands of small Datasets. Here highdicom builds the SEG for
one source frame only (every shared attribute, the Segment Sequence, file meta), and the
attributes that depend on all frames are written with numpy and pre-encoded Explicit VR
Little Endian bytes, laid out exactly as highdicom 0.28 lays them out: the frames in its
order (segment, then plane along highdicom's slice normal), the same Dimension Index Values,
Derivation Image, Plane Position and Segment Identification items, the same Source Image and
Referenced Series Sequences, Spacing Between Slices and Dimension Organization Type. The
Per-frame Functional Groups Sequence is stored as a raw element that pydicom writes as it
is (and parses only if someone reads it). tests/results/test_seg_fast.py checks the result
against highdicom's own, element by element.

It applies only where the frame plan needs nothing (framing.py: whole even-length frames, or
an encapsulated LABELMAP) and to highdicom 0.28; everything else takes highdicom's path.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, cast

import highdicom as hd
import numpy as np
from highdicom.spatial import (
    VOLUME_INDEX_CONVENTION,
    _get_slice_distances,
    get_normal_vector,
    get_volume_positions,
)
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element
from pydicom.tag import Tag
from pydicom.uid import UID, RLELossless
from pydicom.valuerep import DS, format_number_as_ds

from ..instance import is_multiframe

_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"}
_PFFG = 0x52009230
_ITEM = b"\xfe\xff\x00\xe0"
#: set by highdicom's _build_luts: a SEG built here builds them when first asked
_INDEX_ATTRIBUTES = frozenset({"_db_con", "_dim_ind_col_names", "_dim_ind_pointers",
                               "_has_frame_references", "_is_tiled_full",
                               "_missing_reference_instances"})


def applies(source_images: Sequence[Dataset], shape: tuple[int, ...], binary: bool,
            syntax: UID, n_labels: int) -> bool:
    """Whether the fast path reproduces highdicom for these inputs (``n_labels``: an upper
    bound of the segment count)."""
    if not hd.__version__.startswith("0.28."):
        return False  # the layout below is highdicom 0.28's
    if any(is_multiframe(ds) for ds in source_images):
        return False
    if any("ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds
           for ds in source_images):
        return False
    rows, columns = shape[1:]
    if binary:
        # framing.plan_frames is plain: whole frames of an even byte count
        return not syntax.is_encapsulated and rows * columns % 16 == 0
    if n_labels > 255:
        return False  # 16-bit label maps: highdicom
    if syntax.is_encapsulated:
        return syntax == RLELossless
    return rows * columns % 2 == 0


def crop_box(labelmap: np.ndarray, columns: int) -> tuple[int, int, int, int] | None:
    """(r0, r1, c0, c1) bounding every non-zero label, rows widened so that a 1-bit frame's
    row block r0..r1 starts and ends on a byte; None when all is zero."""
    nonzero = np.any(labelmap, axis=0)
    rows_any, cols_any = np.flatnonzero(nonzero.any(axis=1)), np.flatnonzero(nonzero.any(axis=0))
    if not rows_any.size:
        return None
    step = 8 // np.gcd(columns, 8)
    r0 = int(rows_any[0]) // step * step
    r1 = min(-(-(int(rows_any[-1]) + 1) // step) * step, labelmap.shape[1])
    return r0, r1, int(cols_any[0]), int(cols_any[-1]) + 1


class FastSegmentation(hd.seg.Segmentation):
    """A highdicom Segmentation whose frame index (highdicom's lookup tables) is built from
    the written frames when first used, not at construction."""

    def __getattr__(self, name: str) -> Any:
        if name in _INDEX_ATTRIBUTES and not self.__dict__.get("_indexing"):
            self.__dict__["_indexing"] = True
            try:
                self._build_luts()
            finally:
                del self.__dict__["_indexing"]
            return self.__dict__[name]
        return super().__getattr__(name)


def _element(tag: int, vr: str, value: bytes) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in _LONG_VRS:
        return head + struct.pack("<HI", 0, len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _item(body: bytes) -> bytes:
    return _ITEM + struct.pack("<I", len(body)) + body


def _sequence(tag: int, items: Sequence[bytes]) -> bytes:
    return _element(tag, "SQ", b"".join(_item(i) for i in items))


def _uid(value: str) -> bytes:
    data = value.encode()
    return data + b"\0" * (len(data) % 2)


def _encoded(elem: DataElement) -> bytes:
    """``elem`` as pydicom writes it in Explicit VR Little Endian."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem)
    return bytes(fp.getvalue())


def _rle(frame: np.ndarray) -> bytes:
    """RLE Lossless (PS3.5 Annex G) of one 8-bit frame: one segment, each row on its own,
    every run of equal bytes as replicate packets of at most 128 (a single byte as a literal
    packet of one): every packet is two bytes, so the segment has an even length."""
    rows, columns = frame.shape
    flat = frame.reshape(-1)
    starts_mask = np.ones(flat.shape, bool)
    starts_mask[1:] = flat[1:] != flat[:-1]
    starts_mask[::columns] = True
    starts = np.flatnonzero(starts_mask)
    lengths = np.diff(np.append(starts, flat.size))
    chunks = -(-lengths // 128)
    values = np.repeat(flat[starts], chunks)
    first = np.repeat(np.cumsum(chunks) - chunks, chunks)
    within = np.arange(values.size) - first
    sizes = np.minimum(128, np.repeat(lengths, chunks) - 128 * within)
    packets = np.empty((values.size, 2), np.uint8)
    packets[:, 0] = np.where(sizes == 1, 0, 257 - sizes).astype(np.uint8)
    packets[:, 1] = values
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    return header + packets.tobytes()


def segmentation(source_images: Sequence[Dataset], pixels: np.ndarray,
                 box: tuple[int, int, int, int], shape: tuple[int, int, int],
                 n_segments: int, binary: bool, omit_empty_frames: bool,
                 kwargs: dict[str, Any]) -> FastSegmentation | None:
    """The SEG for segment numbers ``pixels`` (the label map cropped to ``box``, see
    :func:`crop_box`) on the (frames, Rows, Columns) grid ``shape``; ``kwargs``: the rest of
    highdicom's Segmentation arguments. None when highdicom would refuse the sources (the
    caller's highdicom path then raises its error)."""
    n_frames, rows, columns = shape
    r0, r1, c0, c1 = box
    positions = [[DS(v, auto_format=True) for v in ds.ImagePositionPatient]
                 for ds in source_images]
    orientation = source_images[0].ImageOrientationPatient
    if any(ds.ImageOrientationPatient != orientation for ds in source_images):
        return None
    values = np.array(positions, float)
    normal = get_normal_vector(orientation, index_convention=VOLUME_INDEX_CONVENTION)
    _, sort_index = np.unique(_get_slice_distances(values, normal), return_index=True)
    if len(sort_index) != n_frames:
        return None  # duplicate positions: highdicom raises

    # which segments each frame holds, from the crop
    flat = pixels.reshape(n_frames, -1)
    counts = np.stack([np.bincount(f, minlength=n_segments + 1) for f in flat])
    holds = counts[:, 1:] > 0  # (frame, segment index)
    nonempty: np.ndarray = np.any(holds, axis=1)
    included = np.flatnonzero(nonempty) if omit_empty_frames else np.arange(n_frames)
    planes = [int(i) for i in sort_index if not omit_empty_frames or nonempty[i]]

    # highdicom builds everything that is shared from the first source image, as it does
    tiny = np.zeros((1, rows, columns), pixels.dtype)
    tiny[0, 0, 0] = 1
    built = hd.seg.Segmentation(source_images=[source_images[0]], pixel_array=tiny,
                                omit_empty_frames=omit_empty_frames, **kwargs)
    for name in _INDEX_ATTRIBUTES:
        built.__dict__.pop(name, None)
    built.__class__ = FastSegmentation
    seg = cast(FastSegmentation, built)
    template = seg.PerFrameFunctionalGroupsSequence[0]
    del seg.PerFrameFunctionalGroupsSequence
    source_item = template.DerivationImageSequence[0].SourceImageSequence[0]
    source_tail = b"".join(_encoded(e) for e in source_item if e.tag > 0x00081155)
    derivation_code = _encoded(template.DerivationImageSequence[0]["DerivationCodeSequence"])

    # shared: spacing from all planes when the sources give none; 3D from the frames kept
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    if "SpacingBetweenSlices" not in source_images[0]:
        spacing, _ = get_volume_positions(image_positions=values.tolist(),
                                          image_orientation=orientation)
        if spacing is None:
            measures.pop("SpacingBetweenSlices", None)
        else:
            measures.SpacingBetweenSlices = format_number_as_ds(spacing)
    three_d = False
    if len(included) > 1 and (not binary or n_segments == 1):  # frames differ by place only
        spacing, _ = get_volume_positions(image_positions=values[included].tolist(),
                                          image_orientation=orientation, sort=False)
        three_d = spacing is not None and spacing > 0.0
    if three_d:
        seg.DimensionOrganizationType = "3D"
    elif "DimensionOrganizationType" in seg:
        del seg.DimensionOrganizationType

    # references to every source image, as highdicom lists them
    references = [_element(0x00081150, "UI", _uid(ds.SOPClassUID))
                  + _element(0x00081155, "UI", _uid(ds.SOPInstanceUID))
                  for ds in source_images]
    by_series: dict[str, list[bytes]] = defaultdict(list)
    for ds, ref in zip(source_images, references, strict=True):
        by_series[str(ds.SeriesInstanceUID)].append(ref)
    raw = {0x00082112: _sequence(0x00082112, references)[12:],
           0x00081115: _sequence(0x00081115, [
               _sequence(0x0008114A, refs) + _element(0x0020000E, "UI", _uid(series))
               for series, refs in by_series.items()])[12:]}

    # per-frame items: the same for a plane in every segment but for the index values
    per_plane = {}
    for k in planes:
        derivation = _sequence(0x00089124, [
            _sequence(0x00082112, [references[k] + source_tail]) + derivation_code])
        position = _sequence(0x00209113, [
            _encoded(DataElement(0x00200032, "DS", positions[k]))])
        per_plane[k] = (derivation, position)
    rank = {k: i for i, k in enumerate(planes, start=1)}
    shared_segment = binary and "SegmentIdentificationSequence" in \
        seg.SharedFunctionalGroupsSequence[0]
    frames: list[tuple[int, int]] = []  # (plane, segment number or 0)
    items = []
    if binary:
        for s in range(1, n_segments + 1):
            for k in planes:
                if omit_empty_frames and not holds[k, s - 1]:
                    continue
                frames.append((k, s))
                derivation, position = per_plane[k]
                body = derivation + _sequence(0x00209111, [
                    _element(0x00209157, "UL", struct.pack("<2I", s, rank[k]))]) + position
                if not shared_segment:
                    body += _sequence(0x0062000A, [
                        _element(0x0062000B, "US", struct.pack("<H", s))])
                items.append(body)
    else:
        for k in planes:
            frames.append((k, 0))
            derivation, position = per_plane[k]
            items.append(derivation + _sequence(0x00209111, [
                _element(0x00209157, "UL", struct.pack("<I", rank[k]))]) + position)
    seg.NumberOfFrames = len(frames)

    # Pixel Data
    pixel_element = seg["PixelData"]
    if binary:
        size = rows * columns // 8
        start = r0 * columns // 8
        out = np.zeros((len(frames), size), np.uint8)
        by_segment: dict[int, list[int]] = defaultdict(list)
        for i, (_, s) in enumerate(frames):
            by_segment[s].append(i)
        for s, indices in by_segment.items():
            block = np.zeros((len(indices), r1 - r0, columns), bool)
            block[:, :, c0:c1] = pixels[[frames[i][0] for i in indices]] == s
            packed = np.packbits(block.reshape(len(indices), -1), axis=1, bitorder="little")
            out[indices, start:start + packed.shape[1]] = packed
        data = out.tobytes()
        seg.PixelData = data + b"\0" * (len(data) % 2)
    else:
        full = np.zeros((len(frames), rows, columns), np.uint8)
        full[:, r0:r1, c0:c1] = pixels[[k for k, _ in frames]]
        if seg.file_meta.TransferSyntaxUID.is_encapsulated:
            encoded = [_rle(f) for f in full]
            if "ExtendedOffsetTable" in seg:
                seg.PixelData, seg.ExtendedOffsetTable, seg.ExtendedOffsetTableLengths = \
                    encapsulate_extended(encoded)
            else:
                seg.PixelData = encapsulate(encoded)
        else:
            data = full.tobytes()
            seg.PixelData = data + b"\0" * (len(data) % 2)
    seg["PixelData"].VR = pixel_element.VR
    seg["PixelData"].is_undefined_length = pixel_element.is_undefined_length

    # pydicom writes raw elements as they are when the dataset says it is in their encoding
    correct_ambiguous_vr(seg, True)
    seg.set_original_encoding(False, True, seg._character_set)
    raw[_PFFG] = _sequence(_PFFG, items)[12:]
    for tag, value in raw.items():
        _set_raw(seg, tag, value)
    return seg


def _set_raw(ds: Dataset, tag: int, value: bytes) -> None:
    """Store an encoded Explicit VR Little Endian SQ value (the items) in ``ds``."""
    ds[tag] = RawDataElement(Tag(tag), "SQ", len(value), value, 0, False, True)
