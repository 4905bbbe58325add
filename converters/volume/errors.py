"""Typed errors of the series → volume loader.

Every message is written for the person who runs the node (a radiology IT engineer): it says
what is wrong with the series in DICOM terms and, where there is one, which option loads it
anyway. All derive from :class:`VolumeError` (a ``ValueError``), so a caller can catch one
type and still tell the reasons apart.
"""

from __future__ import annotations


class VolumeError(ValueError):
    """The instances given do not form a volume the loader is willing to build."""


class NotAVolumeError(VolumeError):
    """No instance is a cross-sectional image: localizers, secondary captures, screen saves,
    colour images, SR/PR/KO/SEG and other non-image objects never become volumes.

    ``excluded`` lists ``(sop_instance_uid, reason)`` for every instance that was set aside.
    """

    def __init__(self, message: str, excluded: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.excluded = list(excluded or [])


class InconsistentStackError(VolumeError):
    """Slices of one stack disagree on Rows/Columns, PixelSpacing or ImageOrientationPatient."""


class MissingSliceError(VolumeError):
    """A gap between neighbouring slices is over 1.5× the median spacing (and is not the
    start of a run of equally wide gaps, which is a spacing change, not a missing slice)."""

    def __init__(self, message: str, lower_mm: float, upper_mm: float, median_mm: float) -> None:
        super().__init__(message)
        self.lower_mm = lower_mm
        self.upper_mm = upper_mm
        self.median_mm = median_mm


class NonUniformGridError(VolumeError):
    """The slices do not lie on a regular grid and the options say reject, not resample."""


class GantryTiltError(NonUniformGridError):
    """Slice positions step along a direction that is not the slice normal (gantry tilt or
    a sheared stack)."""


class IrregularSpacingError(NonUniformGridError):
    """Slices are parallel and unsheared but their spacing along the normal varies."""


class DuplicatePositionError(VolumeError):
    """Two frames of the chosen stack share a position and nothing tells them apart."""


class PixelDataError(VolumeError):
    """Pixel data could not be decoded (transfer syntax without an installed decoder, or
    corrupt data)."""


class StackSelectionError(VolumeError):
    """The ``select_stack`` option named a stack that does not exist."""
