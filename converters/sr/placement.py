"""Spatial coordinates for the report: patient points and lines → SCOORD on a source image,
or SCOORD3D in the frame of reference.

A viewer shows an SCOORD on the one image it references (OHIF's SR viewport, a stack, shows
nothing else: see ``OHIF.md``), so a point goes on the image nearest to it, at its place in
that image; lines go on an image when they lie in that image's slab (within half the slice
spacing of its plane, the band a viewer shows as that slice), else they stay SCOORD3D
lines in space. SCOORD coordinates are (column, row) with (0, 0) the outer
corner of the first pixel, so a pixel centre is at (i + 0.5, j + 0.5) (PS3.3 C.18.6.1.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from ..measurements.geometry import frame_planes


@dataclass(frozen=True)
class FramePlane:
    """One source frame: its dataset, frame number (None: single-frame) and plane."""

    dataset: Dataset
    frame_number: int | None
    position: np.ndarray  # Image Position (Patient): centre of the first pixel, mm
    row_dir: np.ndarray  # direction of increasing column index
    col_dir: np.ndarray  # direction of increasing row index
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm

    @property
    def normal(self) -> np.ndarray:
        normal: np.ndarray = np.cross(self.row_dir, self.col_dir)
        return normal

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """(n, 3) patient points → (n, 2) SCOORD (column, row) of their projections."""
        d = np.asarray(points, float) - self.position
        return np.column_stack([d @ self.row_dir / self.pixel_spacing[1] + 0.5,
                                d @ self.col_dir / self.pixel_spacing[0] + 0.5])

    def within_image(self, image_points: np.ndarray) -> bool:
        """Whether SCOORD (column, row) points lie on the pixel matrix (borders included)."""
        cr = np.asarray(image_points, float)
        columns, rows = int(self.dataset.Columns), int(self.dataset.Rows)
        tol = 1e-6
        return bool((cr >= -tol).all() and (cr[:, 0] <= columns + tol).all()
                    and (cr[:, 1] <= rows + tol).all())

    def source_image(self) -> hd.sr.SourceImageForRegion:
        return hd.sr.SourceImageForRegion.from_source_image(
            self.dataset,
            referenced_frame_numbers=[self.frame_number] if self.frame_number else None)


class Frames:
    """The source frames (in any order) as planes, with their slab half-thickness."""

    def __init__(self, frame_refs: Sequence[tuple[Dataset, int | None]]) -> None:
        if not frame_refs:
            raise ValueError("no source frames")
        planes_of: dict[int, list[tuple[np.ndarray, np.ndarray, tuple[float, float]]]] = {}
        self.planes: list[FramePlane] = []
        for ds, number in frame_refs:
            if id(ds) not in planes_of:  # a multi-frame dataset's planes, once
                planes_of[id(ds)] = frame_planes([ds])
            planes = planes_of[id(ds)]
            ipp, iop, spacing = planes[(number or 1) - 1]
            self.planes.append(FramePlane(ds, number, ipp, iop[:3], iop[3:], spacing))
        self._positions = np.array([p.position for p in self.planes])
        self._normals = np.array([p.normal for p in self.planes])
        offsets = np.sort(np.einsum("ij,j->i", self._positions, self._normals[0]))
        gaps = np.diff(offsets)
        gaps = gaps[gaps > 1e-6]
        if len(gaps):
            between = float(np.median(gaps))
        else:
            ds = self.planes[0].dataset
            between = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1)
        #: Half the distance between adjacent planes (a single frame: half its thickness).
        self.half_slab = between / 2

    def _distances(self, points: np.ndarray) -> np.ndarray:
        """(frames, n) signed distances of (n, 3) points from every plane."""
        distances: np.ndarray = np.einsum(
            "fnj,fj->fn", np.asarray(points, float)[None] - self._positions[:, None],
            self._normals)
        return distances

    def nearest(self, point: np.ndarray) -> FramePlane:
        """The frame whose plane is nearest ``point``."""
        distances = np.abs(self._distances(np.asarray(point, float)[None])[:, 0])
        return self.planes[int(np.argmin(distances))]

    def holding(self, points: np.ndarray) -> FramePlane | None:
        """The frame whose slab holds every point and whose pixel matrix holds their
        projections, or None."""
        pts = np.asarray(points, float)
        farthest = np.abs(self._distances(pts)).max(axis=1)
        index = int(np.argmin(farthest))
        if float(farthest[index]) > self.half_slab + 1e-6:
            return None
        best = self.planes[index]
        return best if best.within_image(best.to_image(pts)) else None


def _on_matrix(plane: FramePlane, image_points: np.ndarray) -> np.ndarray:
    """Image points onto the pixel matrix: what rounding put a hair outside goes back to
    its border (a body touching the field of view ends on the image's edge)."""
    upper = [int(plane.dataset.Columns), int(plane.dataset.Rows)]
    clipped: np.ndarray = np.clip(image_points, 0.0, upper)
    return clipped


def point_on_image(frames: Frames, point: Sequence[float]) -> hd.sr.ImageRegion:
    """A POINT at ``point``'s projection on the nearest source image (a point outside the
    field of view ends on its border)."""
    plane = frames.nearest(np.asarray(point, float))
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=_on_matrix(plane, plane.to_image(np.asarray(point, float)[None])),
        source_image=plane.source_image())


def point_in_space(point: Sequence[float], frame_of_reference_uid: str) -> hd.sr.ImageRegion3D:
    """A POINT at ``point`` (patient mm)."""
    return hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                               graphic_data=np.asarray(point, float)[None],
                               frame_of_reference_uid=frame_of_reference_uid)


def lines(frames: Frames, ends: Sequence[Sequence[Sequence[float]]], frame_of_reference_uid: str
          ) -> list[hd.sr.CoordinatesForMeasurement | hd.sr.CoordinatesForMeasurement3D]:
    """Two-point POLYLINEs a measurement is inferred from, all on one image when its slab
    holds every line, else all in space: a viewer that draws a measurement's lines together
    (OHIF) draws them on the image of the first."""
    pts = np.asarray(ends, float)  # (lines, 2, 3)
    plane = frames.holding(pts.reshape(-1, 3))
    if plane is None:
        return [hd.sr.CoordinatesForMeasurement3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POLYLINE, graphic_data=segment,
            frame_of_reference_uid=frame_of_reference_uid) for segment in pts]
    return [hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=_on_matrix(plane, plane.to_image(segment)),
        source_image=plane.source_image()) for segment in pts]
