"""Spine measurements from a binary mask on a voxel grid (pure numpy / scipy maths).

Conventions: heights are measured along the patient's cranio-caudal axis (LPS +z) in the
mid-sagittal slab of the structure, depths along the antero-posterior axis (LPS +y). A
voxel counts with its full extent, so a 40 mm high box sampled at 0.5 mm measures 40 mm.
Heights therefore assume a spine roughly aligned with the patient axes (supine scan); the
tilt of a lordotic level shortens nothing but lengthens heights by 1/cos(tilt).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .geometry import AP, LR, SI, Grid, voxel_indices

#: A measured line: its (lower, upper) end points, patient LPS mm.
Line = tuple[tuple[float, float, float], tuple[float, float, float]]

#: Fraction of the body's depth between its anterior/posterior border and the point where
#: the anterior/posterior height is taken (keeps cortex partial volume and osteophytes out).
EDGE_INSET = 0.1


@dataclass(frozen=True)
class RegionStatistics:
    """Volume, centroid and intensity statistics of one structure."""

    voxel_count: int
    volume_ml: float
    centroid: tuple[float, float, float]  # patient LPS, mm
    mean: float | None  # image units (HU on CT); None without an image
    sd: float | None


@dataclass(frozen=True)
class BodyHeights:
    """Anterior, middle and posterior height of a vertebral body (mm) and Genant-style
    height loss ratio ``1 - min / max`` of the three (0 = no deformity, ≥ 0.2 = fracture
    grade 1 or worse)."""

    anterior_mm: float
    middle_mm: float
    posterior_mm: float
    #: Where each height was taken (anterior, middle, posterior): a vertical line in the
    #: mid-sagittal slab, as long as the height. Not part of equality (the values are).
    lines: tuple[Line, Line, Line] | None = field(default=None, compare=False)

    @property
    def height_loss_ratio(self) -> float:
        heights = (self.anterior_mm, self.middle_mm, self.posterior_mm)
        return 1.0 - min(heights) / max(heights)


def region_statistics(
    mask: np.ndarray, grid: Grid, image: np.ndarray | None = None
) -> RegionStatistics:
    """Voxel count, volume (mL), centroid (patient mm) and mean / sample SD of ``image``
    inside ``mask``."""
    idx = voxel_indices(mask)
    n = len(idx)
    if n == 0:
        raise ValueError("empty mask: no statistics")
    centroid = grid.to_patient(idx.mean(axis=0, keepdims=True))[0]
    mean = sd = None
    if image is not None:
        values = image[mask].astype(np.float64)
        mean = float(values.mean())
        sd = float(values.std(ddof=1)) if n > 1 else 0.0
    x, y, z = (float(c) for c in centroid)
    return RegionStatistics(n, n * grid.voxel_volume_mm3 / 1000.0, (x, y, z), mean, sd)


def _column(points: np.ndarray, grid: Grid, ap_position: float, lr_position: float
            ) -> tuple[float, Line]:
    """Cranio-caudal extent of the points within half a voxel of ``ap_position``, and that
    extent as a vertical line at (``lr_position``, the column's AP position)."""
    half = max(grid.extent_along(AP) / 2, 1e-6)
    ap = points @ AP
    # The tolerance keeps a column exactly half a voxel away in, whatever the rounding.
    near = np.abs(ap - ap_position) <= half * (1 + 1e-9) + 1e-9
    at = ap_position
    if not near.any():  # nearest occupied column when the exact one is empty
        near = np.abs(ap - ap_position) <= np.abs(ap - ap_position).min() + 1e-6
        at = float(np.median(ap[near]))
    z = points[near] @ SI
    extent = grid.extent_along(SI)
    low, high = float(z.min() - extent / 2), float(z.max() + extent / 2)
    x, y = float(lr_position), float(at)
    return high - low, ((x, y, low), (x, y, high))


def _column_height(points: np.ndarray, grid: Grid, ap_position: float) -> float:
    """Cranio-caudal extent of the points within half a voxel of ``ap_position``."""
    return _column(points, grid, ap_position, 0.0)[0]


def _mid_sagittal(points: np.ndarray, grid: Grid) -> tuple[np.ndarray, float]:
    """Points of the sagittal slab (1 voxel or ±1 mm wide) through the structure's centre,
    and the slab's LR position (a voxel centre)."""
    lr = points @ LR
    half = max(grid.extent_along(LR) / 2, 1.0)
    # Centre the slab on the voxel nearest the median, not on the median itself: with an even
    # count, or a mask in two parts, the median can fall between voxels and leave the slab
    # empty. The tolerance keeps columns exactly half a voxel away despite rounding.
    if len(lr) == 0:
        return points, 0.0
    median = np.median(lr)
    centre = float(lr[np.argmin(np.abs(lr - median))])
    slab: np.ndarray = points[np.abs(lr - centre) <= half * (1 + 1e-9) + 1e-9]
    return slab, centre


def body_heights(mask: np.ndarray, grid: Grid) -> BodyHeights:
    """Anterior / middle / posterior heights of a vertebral body mask, with their lines.

    Taken in the mid-sagittal slab at ``EDGE_INSET`` of the depth from the anterior and
    posterior borders and at mid-depth.
    """
    pts, lr = _mid_sagittal(grid.points(mask), grid)
    if len(pts) == 0:
        raise ValueError("empty mask: no heights")
    ap = pts @ AP
    half = grid.extent_along(AP) / 2
    front, back = ap.min() - half, ap.max() + half  # outer borders of the outermost voxels
    depth = back - front
    # LPS +y is posterior, so the anterior border is the smallest y.
    (anterior, a_line), (middle, m_line), (posterior, p_line) = (
        _column(pts, grid, at, lr) for at in
        (front + EDGE_INSET * depth, front + 0.5 * depth, back - EDGE_INSET * depth))
    return BodyHeights(anterior_mm=anterior, middle_mm=middle, posterior_mm=posterior,
                       lines=(a_line, m_line, p_line))


def disc_height(mask: np.ndarray, grid: Grid) -> float:
    """Height of an intervertebral disc at its mid-depth in the mid-sagittal slab (mm)."""
    pts, _ = _mid_sagittal(grid.points(mask), grid)
    if len(pts) == 0:
        raise ValueError("empty mask: no disc height")
    ap = pts @ AP
    return _column_height(pts, grid, (ap.min() + ap.max()) / 2)


def trabecular_attenuation(
    mask: np.ndarray, grid: Grid, image: np.ndarray, erosion_mm: float = 3.0
) -> tuple[float, int]:
    """Mean ``image`` value over voxels whose centre lies more than ``erosion_mm`` inside the
    mask surface (removes the cortex), and
    the voxel count of that core. For L1 on CT this is the opportunistic osteoporosis
    screening value (HU)."""
    # edt is centre-to-centre distance to the nearest outside voxel; minus half a voxel it is
    # the depth of the voxel centre below the mask surface.
    # Only the mask's bounding box, one voxel wider, matters: every voxel outside it is
    # farther from the mask than the background voxel on the box's edge in between.
    box = _bounding_box(mask, pad=1)
    depth = ndimage.distance_transform_edt(mask[box], sampling=grid.spacing) - \
        grid.spacing.min() / 2
    core = depth > erosion_mm
    if not core.any():
        raise ValueError(f"body too small for a {erosion_mm} mm erosion")
    return float(image[box][core].astype(np.float64).mean()), int(core.sum())


def _bounding_box(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask``, grown by ``pad`` voxels (within bounds)."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if len(hits) == 0:
            return tuple(slice(0, 0) for _ in range(mask.ndim))
        box.append(slice(max(hits[0] - pad, 0), min(hits[-1] + pad + 1, mask.shape[axis])))
    return tuple(box)


def axial_areas(mask: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Cross-sectional area (mm²) of ``mask`` in axial slabs one voxel-extent thick.

    Returns (slab centre z in mm, area in mm²). Works for any acquisition plane: every voxel
    adds its volume to the slab holding its centre, and area = volume / slab thickness.
    """
    z = grid.points(mask) @ SI
    if len(z) == 0:
        return np.empty(0), np.empty(0)
    t = grid.extent_along(SI)
    # Slab edges half a voxel off the first centre, so axial slices fall each in one slab.
    bins = np.floor((z - z.min()) / t + 0.5).astype(int)
    counts = np.bincount(bins)
    centres = z.min() + np.arange(len(counts)) * t
    keep = counts > 0
    return centres[keep], counts[keep] * grid.voxel_volume_mm3 / t


def minimum_area_per_level(
    canal: np.ndarray, levels: Mapping[str, np.ndarray], grid: Grid
) -> dict[str, float]:
    """Smallest axial cross-sectional area (mm²) of the canal within each level's
    cranio-caudal range. ``levels`` maps a level name to that vertebra's (or body's) mask."""
    centres, areas = axial_areas(canal, grid)
    out: dict[str, float] = {}
    if len(areas) == 0:
        return out
    for name, level_mask in levels.items():
        z = grid.points(level_mask) @ SI
        if len(z) == 0:
            continue
        inside = (centres >= z.min()) & (centres <= z.max())
        if inside.any():
            out[name] = float(areas[inside].min())
    return out


def anterior_of(mask: np.ndarray, boundary: np.ndarray, grid: Grid) -> np.ndarray:
    """The part of ``mask`` in front of ``boundary``'s anterior border within the mask's
    cranio-caudal range: a whole vertebra's body, in front of the spinal canal."""
    pts = grid.points(mask)
    z = pts @ SI
    bpts = grid.points(boundary)
    bz = bpts @ SI
    near = (bz >= z.min()) & (bz <= z.max())
    if not near.any():
        return np.zeros_like(mask)
    border = float((bpts[near] @ AP).min())  # LPS: anterior = smaller y
    keep = (pts @ AP) < border
    out = np.zeros_like(mask)
    out[tuple(voxel_indices(mask)[keep].T)] = True
    return out


def nearest_frame(grid: Grid, point: np.ndarray) -> int:
    """Index of the frame whose plane is closest to the patient ``point``."""
    ijk = np.linalg.solve(grid.affine[:3, :3], np.asarray(point) - grid.affine[:3, 3])
    return int(round(float(ijk[0])))
