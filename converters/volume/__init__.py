"""DICOM series → volume with exact geometry, and back (label maps onto source frames).

Entry points: :func:`load_series` and :func:`to_source_grid` (inverse:
:func:`from_source_grid`). See :mod:`converters.volume.loader` for the pixel type rule,
:mod:`converters.volume.stacks` for how series split into stacks and which is primary, and
:mod:`converters.volume.resample` for gantry tilt / irregular spacing.
"""

from .errors import (
    DuplicatePositionError,
    GantryTiltError,
    InconsistentStackError,
    IrregularSpacingError,
    MissingSliceError,
    NonUniformGridError,
    NotAVolumeError,
    PixelDataError,
    StackSelectionError,
    VolumeError,
)
from .frames import SourceFrame
from .loader import SourceGrid, Volume, VolumeMetadata, from_source_grid, load_series, to_source_grid
from .stacks import Stack

__all__ = [
    "DuplicatePositionError",
    "GantryTiltError",
    "InconsistentStackError",
    "IrregularSpacingError",
    "MissingSliceError",
    "NonUniformGridError",
    "NotAVolumeError",
    "PixelDataError",
    "SourceFrame",
    "SourceGrid",
    "Stack",
    "StackSelectionError",
    "Volume",
    "VolumeError",
    "VolumeMetadata",
    "from_source_grid",
    "load_series",
    "to_source_grid",
]
