"""Geometry of one stack: the shared plane, slice order along the normal, and whether the
slice positions form a regular grid (uniform spacing, no shear, no missing slice).

Conventions: LPS patient coordinates in mm (DICOM's own). The row cosine is the direction of
increasing column index, the column cosine that of increasing row index; the slice normal is
row × column, so the volume's direction matrix (row, column, normal) is always right-handed
and slices are ordered by ascending position along the normal — never by InstanceNumber or
file order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InconsistentStackError, MissingSliceError
from .frames import Frame


@dataclass(frozen=True)
class Plane:
    """What every frame of a stack shares: orientation, pixel spacing and matrix size.

    ``row_spacing`` is the distance between rows (PixelSpacing[0]), ``column_spacing`` the
    distance between columns (PixelSpacing[1]).
    """

    row: np.ndarray
    column: np.ndarray
    normal: np.ndarray
    row_spacing: float
    column_spacing: float
    rows: int
    columns: int

    @property
    def direction(self) -> np.ndarray:
        """3×3 matrix with columns row, column, normal (SimpleITK's direction)."""
        return np.stack([self.row, self.column, self.normal], axis=1)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b), -1.0, 1.0))))


def common_plane(frames: Sequence[Frame], orientation_tolerance: float = 1e-3) -> Plane:
    """The plane shared by ``frames``; InconsistentStackError if Rows/Columns, PixelSpacing
    or ImageOrientationPatient differ (cosines by more than ``orientation_tolerance``)."""
    first = frames[0]
    sizes = np.array([(f.rows, f.columns) for f in frames])
    spacings = np.array([f.pixel_spacing for f in frames])
    cosines = np.stack([f.orientation for f in frames])
    # Vectorised checks first; the loop below only runs to name the offending instance.
    if not (np.all(sizes == sizes[0])
            and np.allclose(spacings, spacings[0], atol=1e-4, rtol=1e-4)
            and np.max(np.abs(cosines - cosines[0])) <= orientation_tolerance):
        for frame in frames[1:]:
            _check_against(frame, first, orientation_tolerance)
    # Re-orthonormalise: headers carry 6-8 significant digits.
    row = first.orientation[:3] / np.linalg.norm(first.orientation[:3])
    column = first.orientation[3:] - np.dot(first.orientation[3:], row) * row
    column /= np.linalg.norm(column)
    return Plane(row=row, column=column, normal=np.cross(row, column),
                 row_spacing=first.pixel_spacing[0], column_spacing=first.pixel_spacing[1],
                 rows=first.rows, columns=first.columns)


def _check_against(frame: Frame, first: Frame, orientation_tolerance: float) -> None:
    uid = frame.source.sop_instance_uid
    if (frame.rows, frame.columns) != (first.rows, first.columns):
        raise InconsistentStackError(
            f"inconsistent matrix size in one stack: {frame.rows}×{frame.columns} in "
            f"SOP instance {uid}, {first.rows}×{first.columns} in the others")
    if not np.allclose(frame.pixel_spacing, first.pixel_spacing, atol=1e-4, rtol=1e-4):
        raise InconsistentStackError(
            f"inconsistent PixelSpacing in one stack: {list(frame.pixel_spacing)} mm in "
            f"SOP instance {uid}, {list(first.pixel_spacing)} mm in the others")
    if np.max(np.abs(frame.orientation - first.orientation)) > orientation_tolerance:
        degrees = _angle_deg(_normal(frame.orientation), _normal(first.orientation))
        raise InconsistentStackError(
            f"inconsistent ImageOrientationPatient in one stack: SOP instance {uid} is "
            f"turned {degrees:.2f}° against the others")


def _normal(orientation: np.ndarray) -> np.ndarray:
    n: np.ndarray = np.cross(orientation[:3], orientation[3:])
    return n / float(np.linalg.norm(n))


def sort_along_normal(frames: Sequence[Frame], normal: np.ndarray) -> list[Frame]:
    """Frames by ascending position along the slice normal (ties: the sender's order)."""
    return sorted(frames, key=lambda f: (float(np.dot(f.position, normal)), f.order))


@dataclass(frozen=True)
class GridCheck:
    """How the sorted slice positions of a stack relate to a regular grid.

    ``offsets``: position of each slice along the normal (mm, ascending);
    ``spacing``: the regular spacing (last − first)/(n − 1) in mm;
    ``median_gap``: median distance between neighbours (mm);
    ``shear_deg``: angle between the stacking direction and the normal (gantry tilt);
    ``in_plane_error_mm``: worst in-plane offset of a slice from the first one's grid;
    ``spacing_error_mm``: worst distance of a slice from its regular-grid position;
    ``missing``: (lower, upper) offsets of gaps that are missing slices.
    """

    offsets: np.ndarray
    spacing: float
    median_gap: float
    shear_deg: float
    in_plane_error_mm: float
    spacing_error_mm: float
    missing: list[tuple[float, float]]

    def sheared(self, tolerance_mm: float) -> bool:
        return self.in_plane_error_mm > tolerance_mm

    def irregular(self, tolerance_mm: float) -> bool:
        return self.spacing_error_mm > tolerance_mm


def check_grid(frames: Sequence[Frame], plane: Plane) -> GridCheck:
    """Measure how far the (sorted) frames are from a regular grid along ``plane.normal``."""
    positions = np.stack([f.position for f in frames])
    offsets = positions @ plane.normal
    n = len(frames)
    if n < 2:
        return GridCheck(offsets, 0.0, 0.0, 0.0, 0.0, 0.0, [])
    step = positions - positions[0]
    along = step @ plane.normal
    in_plane = step - np.outer(along, plane.normal)
    in_plane_error = float(np.max(np.linalg.norm(in_plane, axis=1)))
    total = positions[-1] - positions[0]
    shear = _angle_deg(total / max(np.linalg.norm(total), 1e-12), plane.normal)
    spacing = (offsets[-1] - offsets[0]) / (n - 1)
    spacing_error = float(np.max(np.abs(offsets - (offsets[0] + spacing * np.arange(n)))))
    gaps = np.diff(offsets)
    median = float(np.median(gaps))
    return GridCheck(offsets, float(spacing), median, shear, in_plane_error, spacing_error,
                     _missing_gaps(offsets, gaps, median))


def _missing_gaps(offsets: np.ndarray, gaps: np.ndarray, median: float
                  ) -> list[tuple[float, float]]:
    """Gaps over 1.5× the median spacing that are isolated. A run of three or more similar
    wide gaps is a change of reconstruction spacing (e.g. 4 mm then 7 mm slabs in a head
    CT), which is irregular spacing, not a missing slice."""
    missing = []
    for i, gap in enumerate(gaps):
        if median <= 0 or gap <= 1.5 * median:
            continue
        similar = np.abs(gaps - gap) <= 0.1 * gap
        lo = hi = i
        while lo > 0 and similar[lo - 1]:
            lo -= 1
        while hi < len(gaps) - 1 and similar[hi + 1]:
            hi += 1
        if hi - lo + 1 < 3:
            missing.append((float(offsets[i]), float(offsets[i + 1])))
    return missing


def raise_missing(check: GridCheck) -> None:
    """MissingSliceError for the first missing gap of ``check``, if any."""
    if check.missing:
        lower, upper = check.missing[0]
        more = f"; {len(check.missing) - 1} more gap(s)" if len(check.missing) > 1 else ""
        raise MissingSliceError(
            f"slice missing between positions {lower:.1f} and {upper:.1f} mm "
            f"(median spacing {check.median_gap:.1f} mm){more}; positions are along the slice "
            "normal. Wait for the rest of the series or load with on_missing='resample'.",
            lower, upper, check.median_gap)
