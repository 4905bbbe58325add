"""DICOM series → volume with exact geometry, and back (label maps onto source frames).

Entry points: :func:`load_series` and :func:`to_source_grid` (inverse:
:func:`from_source_grid`).

Decisions, each documented where it is made:

- Geometry (:mod:`.geometry`): LPS; direction columns = row cosine, column cosine, their
  cross product; slices ascending along that normal — never InstanceNumber or file order.
- Stacks (:mod:`.stacks`): split by series, echo, temporal position, b-value, enhanced
  StackID, orientation (normals > 5° apart) and repeated positions; primary = most frames,
  then earliest echo/time point/acquisition; ``select_stack`` overrides.
- Not volumes (:mod:`.sop_classes`, :mod:`.frames`): SOP classes outside the CT/MR/PET
  allow-list (:class:`NotAVolumeSopClassError` when no instance is in it), Siemens mosaics
  (:class:`UnsupportedMosaicError`), ImageType LOCALIZER/SCOUT/SCREEN SAVE/PROJECTION
  IMAGE…, colour images, no geometry.
- Transfer syntaxes: whatever pydicom's installed decoders take, big endian included
  (values come back in native byte order); others → :class:`UnsupportedTransferSyntaxError`
  before any pixel data is decoded.
- Grid (:mod:`.geometry`, :mod:`.resample`): slices must sit within 0.01 mm of a regular,
  unsheared grid; otherwise resampled (default) or rejected per ``on_tilt`` /
  ``on_irregular``; an isolated gap over 1.5× the median spacing is a missing slice
  (error unless ``on_missing="resample"``). Resampling reproduces dcm2niix's tilt-corrected,
  equidistant grid.
- Pixel type (:mod:`.loader`): rescaled values; stored type without rescale, int16/int32
  for integer rescale, float32 otherwise.
"""

from .errors import (
    DuplicatePositionError,
    GantryTiltError,
    InconsistentStackError,
    IrregularSpacingError,
    MissingSliceError,
    NonUniformGridError,
    NotAVolumeError,
    NotAVolumeSopClassError,
    PixelDataError,
    StackSelectionError,
    UnsupportedMosaicError,
    UnsupportedTransferSyntaxError,
    VolumeError,
)
from .frames import SourceFrame
from .loader import (
    SourceGrid,
    Volume,
    VolumeMetadata,
    from_source_grid,
    load_series,
    to_source_grid,
)
from .sop_classes import VOLUME_SOP_CLASSES, is_volume_sop_class
from .stacks import Stack

__all__ = [
    "VOLUME_SOP_CLASSES",
    "DuplicatePositionError",
    "GantryTiltError",
    "InconsistentStackError",
    "IrregularSpacingError",
    "MissingSliceError",
    "NonUniformGridError",
    "NotAVolumeError",
    "NotAVolumeSopClassError",
    "PixelDataError",
    "SourceFrame",
    "SourceGrid",
    "Stack",
    "StackSelectionError",
    "UnsupportedMosaicError",
    "UnsupportedTransferSyntaxError",
    "Volume",
    "VolumeError",
    "VolumeMetadata",
    "from_source_grid",
    "is_volume_sop_class",
    "load_series",
    "to_source_grid",
]
