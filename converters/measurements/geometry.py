"""Voxel grid → patient coordinates (DICOM LPS, millimetres)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from ..instance import frame_numbers, is_multiframe

#: Patient axes in LPS: +x left, +y posterior, +z superior (PS3.3 C.7.6.2.1.1).
LR, AP, SI = np.eye(3)


@dataclass(frozen=True)
class Grid:
    """Maps array indices ``(frame, row, column)`` to patient coordinates.

    Attributes:
        affine: 4 × 4 matrix; ``affine @ (frame, row, column, 1)`` is the voxel centre in
            patient LPS mm.
    """

    affine: np.ndarray

    @classmethod
    def from_spacing(
        cls, spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0)
    ) -> Grid:
        """An axis-aligned grid: frames along +z (superior), rows along +y, columns along +x.

        ``spacing`` is (slice, row, column) spacing in mm.
        """
        a = np.eye(4)
        a[:3, 0] = SI * spacing[0]
        a[:3, 1] = AP * spacing[1]
        a[:3, 2] = LR * spacing[2]
        a[:3, 3] = origin
        return cls(a)

    @classmethod
    def from_datasets(cls, datasets: Sequence[Dataset]) -> Grid:
        """Grid of the source frames, in the order given (frames must be sorted along the
        slice normal; see :func:`frame_order`).

        Uses Image Orientation (Patient), Pixel Spacing and the Image Position (Patient) of
        the first and last frame (top level for single-frame images, functional groups for
        enhanced multi-frame ones); raises ``ValueError`` naming a missing attribute.
        """
        return cls.from_planes(frame_planes(datasets), datasets[0])

    @classmethod
    def from_planes(
        cls, planes: Sequence[tuple[np.ndarray, np.ndarray, tuple[float, float]]],
        first: Dataset | None = None,
    ) -> Grid:
        """Grid of frames given as sorted (Image Position, Image Orientation, Pixel Spacing);
        ``first`` supplies the slice thickness of a single frame."""
        origin, iop, (dr, dc) = planes[0]
        row_dir, col_dir = iop[:3], iop[3:]  # direction of increasing column / row index
        if len(planes) > 1:
            step = (planes[-1][0] - origin) / (len(planes) - 1)
        else:
            get = first.get if first is not None else (lambda *_: None)
            thickness = float(get("SpacingBetweenSlices") or get("SliceThickness") or 1)
            step = np.cross(row_dir, col_dir) * thickness
        a = np.eye(4)
        a[:3, 0] = step
        a[:3, 1] = col_dir * dr
        a[:3, 2] = row_dir * dc
        a[:3, 3] = origin
        return cls(a)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @property
    def spacing(self) -> np.ndarray:
        """Physical length of one step along each array axis (frame, row, column), mm."""
        spacing: np.ndarray = np.linalg.norm(self.affine[:3, :3], axis=0)
        return spacing

    def extent_along(self, axis: np.ndarray) -> float:
        """Length of one voxel's projection onto the unit vector ``axis`` (mm)."""
        return float(np.abs(axis @ self.affine[:3, :3]).sum())

    def cropped(self, box: Sequence[slice]) -> Grid:
        """The grid of the sub-array ``array[box]`` (same axes, origin at the box's corner)."""
        start = np.array([b.start or 0 for b in box] + [1], float)
        a = self.affine.copy()
        a[:3, 3] = self.affine[:3] @ start
        return Grid(a)

    def to_patient(self, indices: np.ndarray) -> np.ndarray:
        """(N, 3) array indices → (N, 3) patient coordinates."""
        patient: np.ndarray = indices @ self.affine[:3, :3].T + self.affine[:3, 3]
        return patient

    def points(self, mask: np.ndarray) -> np.ndarray:
        """Patient coordinates of the voxel centres where ``mask`` is true."""
        return self.to_patient(voxel_indices(mask).astype(float))


def voxel_indices(mask: np.ndarray) -> np.ndarray:
    """(n, ndim) indices of the true voxels, as ``np.argwhere`` gives them (C order).

    Through the flat index: ~7× faster than ``argwhere`` on a 300-slice volume, and the
    measurements call it once or more per structure.
    """
    return np.column_stack(np.unravel_index(np.flatnonzero(mask), mask.shape))


def _plane_attr(ds: Dataset, frame: Dataset | None, shared: Dataset | None, seq: str,
                attr: str) -> list[float]:
    """The values of geometry attribute ``attr``: from functional group ``seq`` of the
    frame, else of the shared groups, else from the top level."""
    values = None
    for holder in (frame, shared):
        if holder is not None and seq in holder and attr in holder[seq].value[0]:
            values = holder[seq].value[0][attr].value
            break
    else:
        if attr in ds:
            values = ds[attr].value
    if values is None:
        raise ValueError(f"source image lacks {attr}; cannot place the label map")
    return [float(v) for v in values]


def frame_planes(datasets: Sequence[Dataset]
                 ) -> list[tuple[np.ndarray, np.ndarray, tuple[float, float]]]:
    """(Image Position, Image Orientation, Pixel Spacing) of every frame of ``datasets``."""
    out = []
    for ds in datasets:
        # functional groups belong to multi-frame images only; a single-frame image's
        # geometry is its Image Plane Module
        multiframe = is_multiframe(ds)
        shared_groups = ds.get("SharedFunctionalGroupsSequence") if multiframe else None
        shared = shared_groups[0] if shared_groups else None
        per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or []) if multiframe else []
        for number in frame_numbers(ds):
            frame = per_frame[number - 1] if number is not None and number <= len(per_frame) \
                else None
            ipp = _plane_attr(ds, frame, shared, "PlanePositionSequence", "ImagePositionPatient")
            iop = _plane_attr(ds, frame, shared, "PlaneOrientationSequence",
                              "ImageOrientationPatient")
            spacing = _plane_attr(ds, frame, shared, "PixelMeasuresSequence", "PixelSpacing")
            out.append((np.asarray(ipp, float), np.asarray(iop, float),
                        (float(spacing[0]), float(spacing[1]))))
    return out


def frame_order(datasets: Sequence[Dataset]) -> np.ndarray:
    """Indices that sort all frames of ``datasets`` along the slice normal."""
    planes = frame_planes(datasets)
    iop = planes[0][1]
    normal = np.cross(iop[:3], iop[3:])
    return np.argsort([float(normal @ p[0]) for p in planes], kind="stable")
