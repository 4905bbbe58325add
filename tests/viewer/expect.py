"""What a viewer should show for a SEG, computed from the object itself (pydicom + highdicom,
independent of OHIF): its segments with their colours, and where each segment lies on each
source image."""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom

LABELMAP_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"


@dataclass(frozen=True)
class Expected:
    number: int
    label: str
    rgb: tuple[int, int, int]


def segment_table(seg: pydicom.Dataset) -> list[Expected]:
    """Segments in SegmentSequence order, their label and RecommendedDisplayCIELabValue as
    sRGB; a LABELMAP's background (number 0), if present, is not a segment to list."""
    out = []
    for item in seg.SegmentSequence:
        if int(item.SegmentNumber) == 0:
            continue
        lab = hd.color.CIELabColor.from_dicom_value(
            tuple(int(v) for v in item.RecommendedDisplayCIELabValue))
        rgb = tuple(int(v) for v in lab.to_rgb())
        out.append(Expected(int(item.SegmentNumber), str(item.SegmentLabel), rgb))  # type: ignore[arg-type]
    return out


def has_background(seg: pydicom.Dataset) -> bool:
    return any(int(item.SegmentNumber) == 0 for item in seg.SegmentSequence)


@dataclass(frozen=True)
class SliceLabels:
    """A SEG's segments on one source image: ``labels[r, c]`` is the segment number there, 0
    for none, -1 where BINARY segments overlap; ``corner`` is the patient position of pixel
    (0, 0) and ``row_step`` / ``col_step`` the patient offset of one row / column."""

    labels: np.ndarray
    corner: np.ndarray
    row_step: np.ndarray
    col_step: np.ndarray


def slice_labels(seg: pydicom.Dataset) -> dict[str, SliceLabels]:
    """Source SOP Instance UID → the SEG's label image on it (only images it has frames on)."""
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_mm, col_mm = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    labelmap = str(seg.SOPClassUID) == LABELMAP_SOP_CLASS
    out: dict[str, SliceLabels] = {}
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = str(item.DerivationImageSequence[0].SourceImageSequence[0]
                     .ReferencedSOPInstanceUID)
        if source not in out:
            ipp = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
            out[source] = SliceLabels(np.zeros(frame.shape, np.int32), ipp,
                                      iop[3:] * row_mm, iop[:3] * col_mm)
        labels = out[source].labels
        if labelmap:
            labels[frame > 0] = frame[frame > 0]
        else:
            number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            on = frame > 0
            labels[on & (labels != 0)] = -1
            labels[on & (labels == 0)] = number
    return {uid: sl for uid, sl in out.items() if (sl.labels != 0).any()}
