"""Which frames a native SEG carries, so that its Pixel Data needs no pad byte.

PS3.5 gives every value an even length, so an odd-length native Pixel Data ends in a pad
byte. OHIF 3.13.2 reads a SEG as one Part 10 object with dcmjs' ``AsyncDicomReader``, whose
``readUncompressed`` takes a native Pixel Data of more than one frame only if it is exactly
ceil(Rows × Columns × frames / 8) bytes (1-bit frames whose pixel count is not a multiple of 8)
or a multiple of the frame count (whole-byte frames): the pad byte fails both ("The calculated
length 154025 does not match the actual length 154026"); its per-frame WADO-RS fallback then
fails on Orthanc 1.10.1 for 1-bit frames whose width is not a multiple of 8. So the frames are
chosen to make the length even:

* BINARY (a frame is one segment on one source frame): with ``omit_empty_frames``, empty
  (segment, source frame) pairs next to that segment's frames are kept as all-zero frames
  until the length is even; without it, the empty pairs farthest from their segment's frames
  are left out. Neither changes what is segmented. highdicom builds those frames with all their
  functional groups (derivation, position, dimension index values, segment identification)
  from a copy of the label map in which each empty pair kept has one background pixel set to
  its segment number ("pokes"); the bit is cleared again in the Pixel Data it wrote.
* LABELMAP with 8-bit frames (a frame is one source frame): an empty source frame next to the
  labelled ones is kept the same way; where none can be (all frames are kept or labelled), the
  frames are written with 16 bits, which Table C.8.20-2 allows for any LABELMAP.
* A BINARY SEG in which every segment covers every source frame (or whose empty frames have no
  background pixel to poke) has no frame to add or leave out; BINARY is 1 bit and native by
  definition here, so it keeps the pad byte (:attr:`FramePlan.pad`).
* One frame needs nothing: dcmjs checks no length then. A pad byte that stays is a NUL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

#: The parity of ceil(Rows × Columns × frames / 8) repeats with the frame count modulo 16:
#: never more frames to add or leave out than this.
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
    and clear after, whether to widen 8-bit LABELMAP frames to 16 bits, and whether the pad
    byte stays."""

    omit_empty_frames: bool
    pokes: tuple[Poke, ...] = ()
    widen: bool = False
    pad: bool = False


def native_length(rows: int, columns: int, frames: int, bits: int) -> int:
    """Bytes of native Pixel Data without padding (1-bit frames are packed without gaps)."""
    return -(-rows * columns * frames * bits // 8)


def plan_frames(pixels: np.ndarray, n_segments: int, binary: bool, omit_empty_frames: bool,
                encapsulated: bool) -> FramePlan:
    """The frames to write for ``pixels`` ((frames, Rows, Columns) segment numbers 0..N)."""
    plain = FramePlan(omit_empty_frames)
    if encapsulated or (not binary and n_segments > 255):
        return plain  # items of compressed frames; or 16-bit frames, always even
    n_frames, rows, columns = pixels.shape
    flat = pixels.reshape(n_frames, rows * columns)
    bits = 1 if binary else 8
    counts = np.stack([np.bincount(f, minlength=n_segments + 1) for f in flat])
    # (frame, segment) holds voxels; LABELMAP: (frame, 0) holds any
    present: np.ndarray = counts[:, 1:] > 0
    if not binary:
        present = np.any(present, axis=1).reshape(n_frames, 1)
    written = int(present.sum()) if omit_empty_frames else present.size
    if written <= 1 or native_length(rows, columns, written, bits) % 2 == 0:
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
    kept: list[tuple[int, int]] | None = None
    if omit_empty_frames:
        for extra in range(1, min(len(pokable), _MAX_CHANGE) + 1):
            if native_length(rows, columns, written + extra, bits) % 2 == 0:
                kept = pokable[:extra]
                break
    elif binary:
        # leave out the frames that cannot be poked and as few pokable ones as needed
        base = written - (len(empty) - len(pokable))
        for left_out in range(0, min(len(pokable), _MAX_CHANGE) + 1):
            if native_length(rows, columns, base - left_out, bits) % 2 == 0:
                kept = pokable[:len(pokable) - left_out]
                break
    if kept is None:
        return FramePlan(omit_empty_frames, widen=not binary, pad=binary)
    return FramePlan(True, tuple(_pokes(flat, kept, binary)))


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
    out: list[Poke] = []
    for k in sorted({k for k, _ in kept}):
        segments = sorted(s for kk, s in kept if kk == k)
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


def finish(seg: Dataset, plan: FramePlan, frame_keys: Sequence[tuple[str, int]]) -> None:
    """Clear the plan's pokes in ``seg``'s Pixel Data, widen it to 16 bits if planned, and
    make a pad byte that stays a NUL.

    ``frame_keys``: (SOP Instance UID, frame number) of each label-map frame, which the
    frames' Derivation Image Sequence references."""
    if plan.pokes:
        _clear_pokes(seg, plan.pokes, frame_keys)
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
        if len(seg.PixelData) > size:
            seg.PixelData = seg.PixelData[:size] + b"\0"


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
        value = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) \
            if binary else 1
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
