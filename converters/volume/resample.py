"""Resampling a sheared (gantry tilt) or irregularly spaced stack onto a regular grid, and
the nearest-neighbour maps between that grid and the source frames.

The regular grid keeps the source orientation (row, column, normal) and pixel spacing; in
the plane it grows to cover every source frame (a tilted stack shifts frame by frame along
the column direction). Along the normal it runs from the first to the last source plane.
Its default slice spacing follows dcm2niix's equidistant output: the smallest source gap,
but no more than twice the number of source slices.

Values: bilinear within each source plane (SimpleITK), then linear between the two source
planes that bracket each grid plane. Grid points outside every source frame get the
PixelPaddingValue if the series has one, else the stack's minimum (air in CT, background
in MR).

Because every source frame shares the grid's orientation and pixel spacing, the maps back and
forth are whole-pixel shifts per frame plus a choice of plane; they are exact inverses for
label maps whenever no two source planes share one grid plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .geometry import Plane


@dataclass(frozen=True)
class RegularGrid:
    """Where the source frames sit on the regular grid.

    ``origin``: LPS position of voxel (0, 0, 0); ``spacing``: (column, row, slice) mm;
    ``size``: (columns, rows, slices); ``shift``: per source frame (sorted along the
    normal), the grid (x, y) index of the frame's pixel (0, 0), as floats;
    ``plane_index``: per source frame, its continuous slice index on the grid.
    """

    origin: np.ndarray
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]
    shift: np.ndarray
    plane_index: np.ndarray


def regular_grid(positions: np.ndarray, plane: Plane, slice_spacing: float | None = None
                 ) -> RegularGrid:
    """The grid covering frames at ``positions`` (ImagePositionPatient, sorted ascending
    along the normal). ``slice_spacing`` (mm) overrides the default spacing rule."""
    sx, sy = plane.column_spacing, plane.row_spacing
    step = positions - positions[0]
    u = step @ plane.row / sx  # frame origin in grid pixels, relative to frame 0
    v = step @ plane.column / sy
    d = step @ plane.normal
    eps = 1e-6
    x0, y0 = int(np.floor(u.min() + eps)), int(np.floor(v.min() + eps))
    x1 = int(np.ceil(u.max() - eps)) + plane.columns - 1
    y1 = int(np.ceil(v.max() - eps)) + plane.rows - 1
    extent = float(d[-1])
    n = len(positions)
    if n < 2 or extent <= 0:
        nz, dz = 1, slice_spacing or 1.0
    elif slice_spacing:
        nz, dz = int(np.floor(extent / slice_spacing + eps)) + 1, float(slice_spacing)
    else:
        smallest = float(np.min(np.diff(d)))
        nz = min(int(round(extent / smallest)) + 1, 2 * n) if smallest > eps else 2 * n
        dz = extent / (nz - 1)
    origin = positions[0] + x0 * sx * plane.row + y0 * sy * plane.column
    shift = np.stack([u - x0, v - y0], axis=1)
    return RegularGrid(origin=origin, spacing=(sx, sy, dz), size=(x1 - x0 + 1, y1 - y0 + 1, nz),
                       shift=shift, plane_index=d / dz)


def resample(values: list[np.ndarray], grid: RegularGrid, outside: float,
             padding: float | None = None, round_planes: bool = False) -> np.ndarray:
    """Source planes (sorted, Rows × Columns each, rescaled values) → array (slices, rows,
    columns) on ``grid``, float64.

    ``outside``: value where no source frame reaches. ``padding``: the rescaled
    PixelPaddingValue (pixels outside the reconstruction circle), or None; a grid point
    whose in-plane neighbours include padding takes its nearest neighbour instead of a
    blend, so padding never smears into tissue. ``round_planes``: round each in-plane
    result before blending between planes (integer output; this is what dcm2niix does, and
    doing the same makes the two agree to the voxel).
    """
    nx, ny, nz = grid.size
    sx, sy = grid.spacing[0], grid.spacing[1]
    in_plane: dict[int, np.ndarray] = {}

    def on_grid(k: int, array: np.ndarray, interpolator: int, default: float) -> np.ndarray:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((sx, sy))
        image.SetOrigin((float(grid.shift[k, 0]) * sx, float(grid.shift[k, 1]) * sy))
        out = sitk.Resample(image, (nx, ny), sitk.Transform(2, sitk.sitkIdentity), interpolator,
                            (0.0, 0.0), (sx, sy), (1.0, 0.0, 0.0, 1.0), default,
                            sitk.sitkFloat64)
        return sitk.GetArrayFromImage(out)

    def plane_on_grid(k: int) -> np.ndarray:
        if k not in in_plane:
            source = np.asarray(values[k], np.float64)
            result = on_grid(k, source, sitk.sitkLinear, outside)
            if padding is not None:
                touched = on_grid(k, (source == padding).astype(np.float64), sitk.sitkLinear, 1.0)
                nearest = on_grid(k, source, sitk.sitkNearestNeighbor, outside)
                result = np.where(touched > 0, nearest, result)
            in_plane[k] = np.rint(result) if round_planes else result
        return in_plane[k]

    out = np.empty((nz, ny, nx), np.float64)
    index = grid.plane_index
    for t in range(nz):
        k = int(np.clip(np.searchsorted(index, t, side="right") - 1, 0, len(index) - 1))
        if k == len(index) - 1 or abs(index[k] - t) < 1e-6:
            out[t] = plane_on_grid(k)
            continue
        w = (t - index[k]) / (index[k + 1] - index[k])
        if abs(1 - w) < 1e-6:
            out[t] = plane_on_grid(k + 1)
        else:
            out[t] = (1 - w) * plane_on_grid(k) + w * plane_on_grid(k + 1)
    return out


def _round(x: np.ndarray | float) -> np.ndarray:
    """Round half up (np.rint rounds half to even, which would make the two directions of
    the map disagree on exact halves)."""
    return np.floor(np.asarray(x) + 0.5).astype(np.int64)


def _paste(src: np.ndarray, dst: np.ndarray, dy: int, dx: int) -> None:
    """dst[y, x] = src[y - dy, x - dx] where both exist."""
    h, w = src.shape
    H, W = dst.shape
    y0, x0 = max(dy, 0), max(dx, 0)
    y1, x1 = min(dy + h, H), min(dx + w, W)
    if y0 < y1 and x0 < x1:
        dst[y0:y1, x0:x1] = src[y0 - dy:y1 - dy, x0 - dx:x1 - dx]


def grid_to_frames(labels: np.ndarray, grid: RegularGrid, rows: int, columns: int
                   ) -> np.ndarray:
    """Nearest grid voxel for every pixel of every source frame: (frames, Rows, Columns)."""
    out = np.zeros((len(grid.plane_index), rows, columns), labels.dtype)
    planes = _round(grid.plane_index)
    shifts = _round(grid.shift)
    for k, t in enumerate(planes):
        if 0 <= t < labels.shape[0]:
            _paste(labels[t], out[k], -int(shifts[k, 1]), -int(shifts[k, 0]))
    return out


def frames_to_grid(frames: np.ndarray, grid: RegularGrid) -> np.ndarray:
    """Nearest source pixel for every grid voxel: (slices, rows, columns); 0 outside."""
    nx, ny, nz = grid.size
    out = np.zeros((nz, ny, nx), frames.dtype)
    index = grid.plane_index
    shifts = _round(grid.shift)
    for t in range(nz):
        k = int(np.argmin(np.abs(index - t)))  # ties go to the lower plane
        _paste(frames[k], out[t], int(shifts[k, 1]), int(shifts[k, 0]))
    return out
