"""Typed errors of the series → volume loader.

Every message is written for the person who runs the node (a radiology IT engineer): it says
what is wrong with the series in DICOM terms and, where there is one, which option loads it
anyway. All derive from :class:`VolumeError` (a ``ValueError``), so a caller can catch one
type and still tell the reasons apart.

``kind`` is a short, stable word for the reason (job tables, logs, status). It is the class
name without "Error" in kebab case — what dicomnode's job service derives from an exception
it did not expect — so both spell a reason the same way.
"""

from __future__ import annotations

from typing import ClassVar


class VolumeError(ValueError):
    """The instances given do not form a volume the loader is willing to build."""

    kind: ClassVar[str] = "volume"


class NotAVolumeError(VolumeError):
    """No instance is a cross-sectional image: localizers, secondary captures, screen saves,
    colour images, SR/PR/KO/SEG and other non-image objects never become volumes.

    ``excluded`` lists ``(sop_instance_uid, reason)`` for every instance that was set aside.
    """

    kind: ClassVar[str] = "not-a-volume"

    def __init__(self, message: str, excluded: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.excluded = list(excluded or [])


class NotAVolumeSopClassError(NotAVolumeError):
    """No instance has a SOP Class UID (0008,0016) of the volume allow-list
    (:mod:`converters.volume.sop_classes`): secondary captures, presentation states,
    encapsulated documents, video, waveforms, SR/KO… whatever their count or geometry.

    ``sop_class_uids``: the SOP classes found, sorted.
    """

    kind: ClassVar[str] = "not-a-volume-sop-class"

    def __init__(self, message: str, excluded: list[tuple[str, str]],
                 sop_class_uids: tuple[str, ...]) -> None:
        super().__init__(message, excluded)
        self.sop_class_uids = sop_class_uids


class UnsupportedMosaicError(NotAVolumeError):
    """A Siemens mosaic (ImageType …\\MOSAIC): one frame that tiles all slices of an EPI
    volume. The loader does not split mosaics (dcm2niix does).

    ``images_in_mosaic``: NumberOfImagesInMosaic of the CSA image header (0029,1010), None
    when the header is absent (anonymised) or unreadable.
    """

    kind: ClassVar[str] = "unsupported-mosaic"

    def __init__(self, message: str, excluded: list[tuple[str, str]],
                 images_in_mosaic: int | None) -> None:
        super().__init__(message, excluded)
        self.images_in_mosaic = images_in_mosaic


class InconsistentStackError(VolumeError):
    """Slices of one stack disagree on Rows/Columns, PixelSpacing or ImageOrientationPatient."""

    kind: ClassVar[str] = "inconsistent-stack"


class MissingSliceError(VolumeError):
    """A gap between neighbouring slices is over 1.5× the median spacing (and is not the
    start of a run of equally wide gaps, which is a spacing change, not a missing slice)."""

    kind: ClassVar[str] = "missing-slice"

    def __init__(self, message: str, lower_mm: float, upper_mm: float, median_mm: float) -> None:
        super().__init__(message)
        self.lower_mm = lower_mm
        self.upper_mm = upper_mm
        self.median_mm = median_mm


class NonUniformGridError(VolumeError):
    """The slices do not lie on a regular grid and the options say reject, not resample."""

    kind: ClassVar[str] = "non-uniform-grid"


class GantryTiltError(NonUniformGridError):
    """Slice positions step along a direction that is not the slice normal (gantry tilt or
    a sheared stack)."""

    kind: ClassVar[str] = "gantry-tilt"


class IrregularSpacingError(NonUniformGridError):
    """Slices are parallel and unsheared but their spacing along the normal varies."""

    kind: ClassVar[str] = "irregular-spacing"


class DuplicatePositionError(VolumeError):
    """Two frames of the chosen stack share a position and nothing tells them apart."""

    kind: ClassVar[str] = "duplicate-position"


class PixelDataError(VolumeError):
    """Pixel data could not be decoded (corrupt data, or a decoder that failed)."""

    kind: ClassVar[str] = "pixel-data"


class UnsupportedTransferSyntaxError(PixelDataError):
    """The TransferSyntaxUID (0002,0010) of an instance has no decoder here: unknown to
    pydicom (private, or newer than it, such as JPEG XL), video, or a codec whose plug-in
    is not installed. Checked before any pixel data is decoded.

    ``transfer_syntax_uid``: the offending UID.
    """

    kind: ClassVar[str] = "unsupported-transfer-syntax"

    def __init__(self, message: str, transfer_syntax_uid: str) -> None:
        super().__init__(message)
        self.transfer_syntax_uid = transfer_syntax_uid


class StackSelectionError(VolumeError):
    """The ``select_stack`` option named a stack that does not exist."""

    kind: ClassVar[str] = "stack-selection"
