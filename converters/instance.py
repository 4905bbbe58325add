"""Frame counting for one DICOM instance (pydicom only, cheap to import)."""

from __future__ import annotations

from pydicom.dataset import Dataset


def frame_count(ds: Dataset) -> int:
    """Number of Frames (0028,0008); 1 when absent, empty or not a positive integer."""
    try:
        value = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1
    return value if value > 0 else 1


def is_multiframe(ds: Dataset) -> bool:
    """True for an instance whose frames are referenced by number: enhanced functional
    groups (per-frame or shared), or a Number of Frames attribute."""
    return ("PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
            or "NumberOfFrames" in ds)
