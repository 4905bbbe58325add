"""Which frames a native SEG carries, and in which order, for OHIF 3.13.2.

Two things in OHIF 3.13.2 read native Pixel Data, and each needs the frames chosen:

1. No pad byte. PS3.5 gives every value an even length, so an odd-length native Pixel Data
   ends in a pad byte. OHIF reads a SEG as one Part 10 object with dcmjs'
   ``AsyncDicomReader``, whose ``readUncompressed`` takes a native Pixel Data of more than one
   frame only if it is exactly ceil(Rows × Columns × frames / 8) bytes (1-bit frames whose
   pixel count is not a multiple of 8) or a multiple of the frame count (whole-byte frames):
   the pad byte fails both ("The calculated length 154025 does not match the actual length
   154026"); its per-frame WADO-RS fallback then fails on Orthanc 1.10.1 for 1-bit frames whose
   width is not a multiple of 8.
2. BINARY frames that start on a byte. cornerstone's dicom-image-loader
   (``wadouri/getUncompressedImageFrame.js``) finds 1-bit frame i at byte
   ``pixelDataOffset + i × Rows × Columns × 0.125`` and ``unpackBinaryFrame`` indexes the byte
   array with that number: unless i × Rows × Columns is a multiple of 8 the index is
   fractional, the typed array gives ``undefined`` and the whole frame is drawn empty (an
   84 × 117 SEG showed every odd frame blank). So when Rows × Columns is not a multiple of 8,
   every frame that holds a segment pixel is put at an index that is a multiple of
   k = 8 / gcd(Rows × Columns, 8) (:func:`alignment`: 2, 4 or 8) and all-zero filler frames
   take the k − 1 indices between two of them: at least (k − 1) × (frames holding pixels − 1)
   fillers, the fewest the rule allows (:attr:`FramePlan.align`).

The frames are chosen so:

* BINARY (a frame is one segment on one source frame): with ``omit_empty_frames``, empty
  (segment, source frame) pairs nearest to that segment's frames are kept as all-zero frames:
  the fillers, then as many more as make the length even (the parity of the length repeats
  with the frame count modulo 16); without it, every empty pair is written anyway and serves
  as a filler, and where the length is odd the empty pairs farthest from their segment's
  frames are left out, as long as enough fillers stay. Neither changes what is segmented.
  highdicom builds those frames with all their functional groups (derivation, position,
  dimension index values, segment identification) from a copy of the label map in which each
  empty pair kept has one background pixel set to its segment number ("pokes"); the bit is
  cleared again in the Pixel Data it wrote. Then the frames are reordered (:func:`aligned_order`:
  each Per-frame Functional Groups item moves with its frame's bits, so every frame keeps its
  own Dimension Index Values, Derivation Image Sequence, Plane Position and Segment
  Identification). PS3.3 C.7.6.17.1 leaves the order to the writer: "The actual order of the
  frames in the object is up to the generating application." A Dimension Organization Type
  of 3D is dropped from a reordered SEG: the defined term is "Spatial Multi-frame image of
  equally spaced parallel planes (3D volume set)" and names no order, but highdicom writes it
  only when the frames *in their stored order* are such a stack (``get_volume_positions(...,
  sort=False)``), which a reordered SEG no longer is, and the attribute is Type 3.
* Dense BINARY segmentations, with too few empty pairs for the fillers (or no background
  pixel to poke in them), keep the frames of point 1 alone, in highdicom's order: OHIF
  (cornerstone) draws the frames that start inside a byte empty, and the writer logs a warning
  that says so (:attr:`FramePlan.misaligned`).
* LABELMAP with 8-bit frames (a frame is one source frame): an empty source frame next to the
  labelled ones is kept the same way; where none can be (all frames are kept or labelled), the
  frames are written with 16 bits, which Table C.8.20-2 allows for any LABELMAP. Whole-byte
  frames always start on a byte.
* A BINARY SEG in which every segment covers every source frame (or whose empty frames have no
  background pixel to poke) has no frame to add or leave out; BINARY is 1 bit and native by
  definition here, so it keeps the pad byte (:attr:`FramePlan.pad`).
* One frame needs nothing: dcmjs checks no length then, and frame 0 starts on a byte. A pad
  byte that stays is a NUL.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd

import numpy as np
from pydicom.dataset import Dataset

#: The parity of ceil(Rows × Columns × frames / 8) repeats with the frame count modulo 16:
#: never more frames to add or leave out than this (beyond the fillers).
_MAX_CHANGE = 16


@dataclass(frozen=True)
class Poke:
    """One background pixel set to ``value`` in label-map frame ``frame`` (``pixel``: row ×
    Columns + column) so that highdicom writes the (segment ``value``, ``frame``) frame."""

    frame: int
    pixel: int
    value: int


@dataclass(frozen=True)
class FramePlan:
    """How to build the SEG: ``omit_empty_frames`` for highdicom, the pixels to set before
    and clear after, whether to widen 8-bit LABELMAP frames to 16 bits, whether the pad
    byte stays, ``align``: the frames holding segment pixels go to indices that are multiples
    of it (1: highdicom's order stays), and ``misaligned``: some of them cannot (too few empty
    frames to put between them), so OHIF draws those empty."""

    omit_empty_frames: bool
    pokes: tuple[Poke, ...] = ()
    widen: bool = False
    pad: bool = False
    align: int = 1
    misaligned: bool = False


def native_length(rows: int, columns: int, frames: int, bits: int) -> int:
    """Bytes of native Pixel Data without padding (1-bit frames are packed without gaps)."""
    return -(-rows * columns * frames * bits // 8)


def alignment(rows: int, columns: int) -> int:
    """k: 1-bit frame i starts on a byte exactly when i is a multiple of k."""
    return 8 // gcd(rows * columns, 8)


def plan_frames(pixels: np.ndarray, n_segments: int, binary: bool, omit_empty_frames: bool,
                encapsulated: bool) -> FramePlan:
    """The frames to write for ``pixels`` ((frames, Rows, Columns) segment numbers 0..N)."""
    plain = FramePlan(omit_empty_frames)
    if encapsulated or (not binary and n_segments > 255):
        return plain  # items of compressed frames; or 16-bit frames, always even
    n_frames, rows, columns = pixels.shape
    bits = 1 if binary else 8
    align = alignment(rows, columns) if binary else 1
    if align == 1 and native_length(rows, columns, 1, bits) % 2 == 0:
        return plain  # whole, even-length frames (512 × 512): no count of them is odd
    flat = pixels.reshape(n_frames, rows * columns)
    counts = np.stack([np.bincount(f, minlength=n_segments + 1) for f in flat])
    # (frame, segment) holds voxels; LABELMAP: (frame, 0) holds any
    present: np.ndarray = counts[:, 1:] > 0
    if not binary:
        present = np.any(present, axis=1).reshape(n_frames, 1)
    real = int(present.sum())  # frames that hold segment pixels
    total = present.size  # every (frame, segment) pair

    def even(frames: int) -> bool:
        return frames <= 1 or native_length(rows, columns, frames, bits) % 2 == 0

    if align == 1 and even(real if omit_empty_frames else total):
        return plain  # dcmjs checks no length for one frame
    # empty (frame, segment index) pairs, nearest to that segment's frames first
    distance = _distances(present)
    empty = [(int(k), int(s)) for k, s in zip(*np.nonzero(~present), strict=True)]
    empty.sort(key=lambda ks: (int(distance[ks]), ks[1], ks[0]))
    free = counts[:, 0].copy()  # background pixels left to poke, per frame
    pokable: list[tuple[int, int]] = []
    for k, s in empty:
        if free[k] > 0:
            free[k] -= 1
            pokable.append((k, s))

    def choose(fillers: int) -> tuple[bool, list[tuple[int, int]]] | None:
        """omit_empty_frames and the empty pairs to poke for an even length with at least
        ``fillers`` all-zero frames, or None."""
        if omit_empty_frames:
            for extra in range(fillers, min(len(pokable), fillers + _MAX_CHANGE) + 1):
                if even(real + extra):
                    return True, pokable[:extra]
            return None
        if even(total) and total - real >= fillers:
            return False, []  # every empty pair is written: the fillers are there
        if not binary:
            return None
        # leave out the frames that cannot be poked and as few pokable ones as needed
        base = total - (len(empty) - len(pokable))
        for left_out in range(0, min(len(pokable), _MAX_CHANGE) + 1):
            if even(base - left_out) and len(pokable) - left_out >= fillers:
                return True, pokable[:len(pokable) - left_out]
        return None

    needed = (align - 1) * max(real - 1, 0)
    if align > 1:
        chosen = choose(needed)
        if chosen is not None:
            return FramePlan(chosen[0], tuple(_pokes(flat, chosen[1], binary)), align=align)
    # dense: no room for the fillers; only the length, in highdicom's order
    misaligned = align > 1 and real > 1
    chosen = choose(0)
    if chosen is not None:
        if chosen[0] == omit_empty_frames and not chosen[1]:
            return FramePlan(omit_empty_frames, misaligned=misaligned)
        return FramePlan(chosen[0], tuple(_pokes(flat, chosen[1], binary)),
                         misaligned=misaligned)
    # nothing to add or leave out: as highdicom writes it (aligned if the empty pairs it
    # writes anyway suffice)
    written_fillers = 0 if omit_empty_frames else total - real
    fits = align > 1 and written_fillers >= needed
    return FramePlan(omit_empty_frames, widen=not binary, pad=binary,
                     align=align if fits else 1, misaligned=misaligned and not fits)


def _distances(present: np.ndarray) -> np.ndarray:
    """(frames, segments): how many frames away the nearest frame holding that segment is
    (the frame count for a segment held nowhere)."""
    n_frames = present.shape[0]
    out = np.full(present.shape, n_frames)
    k = np.arange(n_frames)
    for s in range(present.shape[1]):
        where = np.flatnonzero(present[:, s])
        if where.size:
            out[:, s] = np.abs(k[:, None] - where[None, :]).min(axis=1)
    return out


def _pokes(flat: np.ndarray, kept: Sequence[tuple[int, int]], binary: bool) -> list[Poke]:
    segments_of: dict[int, list[int]] = defaultdict(list)
    for k, s in kept:
        segments_of[k].append(s)
    out: list[Poke] = []
    for k in sorted(segments_of):
        segments = sorted(segments_of[k])
        background = np.flatnonzero(flat[k] == 0)[:len(segments)]
        out.extend(Poke(k, int(p), s + 1 if binary else 1)
                   for p, s in zip(background, segments, strict=True))
    return out


def poked(pixels: np.ndarray, plan: FramePlan) -> np.ndarray:
    """``pixels`` with the plan's pokes set (a copy when there are any)."""
    if not plan.pokes:
        return pixels
    out = pixels.copy()
    flat = out.reshape(out.shape[0], -1)
    for p in plan.pokes:
        flat[p.frame, p.pixel] = p.value
    return out


def aligned_order(holds_pixels: Sequence[bool], k: int) -> list[int]:
    """A new order of the frames (old indices) in which every frame that holds pixels sits at
    a multiple of ``k`` and the empty frames fill the indices between.

    Frames keep their old order as far as the rule allows: an empty frame stays where it was
    unless the empty frames left would then be too few for the gaps still to come; the gap
    before a frame that holds pixels is filled with the earliest empty frames not yet placed;
    the empty frames left over go last. Raises ``ValueError`` when there are fewer empty
    frames than (k − 1) × (frames holding pixels − 1)."""
    n_real = sum(1 for h in holds_pixels if h)
    empties = [i for i, h in enumerate(holds_pixels) if not h]

    def gaps(length: int, left: int) -> int:  # empty frames needed before `left` more
        return 0 if left == 0 else (-length) % k + (k - 1) * (left - 1)

    if len(empties) < gaps(0, n_real):
        raise ValueError(f"{len(empties)} empty frames cannot separate {n_real} frames "
                         f"holding pixels by {k - 1}")
    placed = [False] * len(holds_pixels)
    out: list[int] = []
    spare = len(empties)  # empty frames not yet placed
    pool = 0  # empties[pool] is the earliest that may not be placed yet
    for i, holds in enumerate(holds_pixels):
        if placed[i]:
            continue
        if holds:
            while len(out) % k:
                while placed[empties[pool]]:
                    pool += 1
                placed[empties[pool]] = True
                out.append(empties[pool])
                spare -= 1
            out.append(i)
            n_real -= 1
        elif spare - 1 >= gaps(len(out) + 1, n_real):
            out.append(i)
            spare -= 1
        else:
            continue  # deferred: fills a gap later, or goes last
        placed[i] = True
    out.extend(i for i in empties if not placed[i])
    return out


def frame_bits(seg: Dataset) -> np.ndarray:
    """(frames, Rows × Columns) pixels of a native 1-bit Pixel Data (first pixel in the lowest
    bit, frames packed without gaps)."""
    frames, size = int(seg.NumberOfFrames), seg.Rows * seg.Columns
    packed = np.frombuffer(seg.PixelData, np.uint8, count=native_length(1, size, frames, 1))
    return np.unpackbits(packed, bitorder="little", count=frames * size).reshape(frames, size)


def holding_frames(seg: Dataset) -> list[int]:
    """Indices of the frames of a native 1-bit ``seg`` that hold any pixel."""
    return [int(i) for i in np.flatnonzero(frame_bits(seg).any(axis=1))]


def misaligned_frames(seg: Dataset) -> list[int]:
    """Indices of the 1-bit frames that hold pixels but start inside a byte (OHIF 3.13.2's
    cornerstone draws them empty)."""
    if seg.BitsAllocated != 1 or seg.file_meta.TransferSyntaxUID.is_encapsulated:
        return []
    size = seg.Rows * seg.Columns
    return [i for i in holding_frames(seg) if i * size % 8]


def finish(seg: Dataset, plan: FramePlan, frame_keys: Sequence[tuple[str, int]]) -> bool:
    """Clear the plan's pokes in ``seg``'s Pixel Data, put its frames in the planned order,
    widen it to 16 bits if planned, and make a pad byte that stays a NUL. Returns whether
    the frames were reordered (an index of them built before is then out of step).

    ``frame_keys``: (SOP Instance UID, frame number) of each label-map frame, which the
    frames' Derivation Image Sequence references."""
    if plan.pokes:
        _clear_pokes(seg, plan.pokes, frame_keys)
    reordered = plan.align > 1 and _align(seg, plan.align)
    if plan.widen:
        frames = int(seg.NumberOfFrames)
        values = np.frombuffer(seg.PixelData, np.uint8, count=seg.Rows * seg.Columns * frames)
        seg.BitsAllocated, seg.BitsStored, seg.HighBit = 16, 16, 15
        seg.PixelData = values.astype("<u2").tobytes()
        seg["PixelData"].VR = "OW"
    if not seg.file_meta.TransferSyntaxUID.is_encapsulated:
        # a pad byte that stays: highdicom 0.28.2 appends b"0" (30H), but an OB value is
        # padded with 00H (PS3.5 6.2)
        size = native_length(seg.Rows, seg.Columns, int(seg.NumberOfFrames), seg.BitsAllocated)
        data = seg.PixelData
        if len(data) != size + size % 2 or (size % 2 and data[-1] != 0):
            seg.PixelData = data[:size] + b"\0" * (size % 2)
    return reordered


def _align(seg: Dataset, k: int) -> bool:
    """Reorder the frames of a native 1-bit ``seg`` so that those holding pixels start on a
    byte: Per-frame Functional Groups items and the frames' bits together. Returns whether
    any frame moved."""
    bits = frame_bits(seg)
    holds = np.count_nonzero(bits, axis=1) > 0
    order = aligned_order([bool(h) for h in holds], k)
    if order == list(range(len(order))):
        return False
    items = list(seg.PerFrameFunctionalGroupsSequence)
    seg.PerFrameFunctionalGroupsSequence = [items[i] for i in order]
    seg.PixelData = np.packbits(bits[order], bitorder="little").tobytes()
    if seg.get("DimensionOrganizationType") == "3D":
        # highdicom's 3D: the frames in their stored order are an equally spaced stack
        del seg.DimensionOrganizationType
    return True


def segment_number(seg: Dataset, item: Dataset) -> int:
    """Referenced Segment Number of a BINARY frame: from its Per-frame Functional Groups
    ``item``, or from the Shared Functional Groups, where highdicom puts it when the SEG has
    one segment."""
    for group in (item, seg.SharedFunctionalGroupsSequence[0]):
        if "SegmentIdentificationSequence" in group:
            return int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    raise ValueError("a frame has no Segment Identification Sequence")


def _clear_pokes(seg: Dataset, pokes: Sequence[Poke], frame_keys: Sequence[tuple[str, int]]
                 ) -> None:
    index = {key: k for k, key in enumerate(frame_keys)}
    binary = seg.SegmentationType == "BINARY"
    wanted = {(p.frame, p.value if binary else 1): p.pixel for p in pokes}
    size = seg.Rows * seg.Columns
    data = bytearray(seg.PixelData)
    cleared = 0
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        k = index[(str(source.ReferencedSOPInstanceUID),
                   int(source.get("ReferencedFrameNumber", 1)))]
        value = segment_number(seg, item) if binary else 1
        pixel = wanted.get((k, value))
        if pixel is None:
            continue
        if binary:
            bit = i * size + pixel
            data[bit >> 3] &= 0xFF ^ (1 << (bit & 7))  # first pixel in the lowest bit
        else:
            data[i * size + pixel] = 0
        cleared += 1
    if cleared != len(pokes):
        raise RuntimeError(f"{len(pokes) - cleared} frame(s) added to even out the Pixel Data "
                           "length were not found in the SEG's functional groups")
    seg.PixelData = bytes(data)
