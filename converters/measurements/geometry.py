"""Voxel grid → patient coordinates (DICOM LPS, millimetres)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

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
        """Grid of single-frame images already sorted along the slice normal.

        Uses Image Orientation (Patient), Pixel Spacing and the Image Position (Patient) of
        the first and last image; raises ``ValueError`` naming a missing attribute.
        """
        first = datasets[0]
        for attr in ("ImageOrientationPatient", "PixelSpacing", "ImagePositionPatient"):
            if attr not in first:
                raise ValueError(f"source image lacks {attr}; cannot place the label map")
        iop = np.asarray(first.ImageOrientationPatient, dtype=float)
        row_dir, col_dir = iop[:3], iop[3:]  # direction of increasing column / row index
        dr, dc = (float(v) for v in first.PixelSpacing)  # row spacing, column spacing
        origin = np.asarray(first.ImagePositionPatient, dtype=float)
        if len(datasets) > 1:
            last = np.asarray(datasets[-1].ImagePositionPatient, dtype=float)
            step = (last - origin) / (len(datasets) - 1)
        else:
            thickness = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1)
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
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def extent_along(self, axis: np.ndarray) -> float:
        """Length of one voxel's projection onto the unit vector ``axis`` (mm)."""
        return float(np.abs(axis @ self.affine[:3, :3]).sum())

    def to_patient(self, indices: np.ndarray) -> np.ndarray:
        """(N, 3) array indices → (N, 3) patient coordinates."""
        return indices @ self.affine[:3, :3].T + self.affine[:3, 3]

    def points(self, mask: np.ndarray) -> np.ndarray:
        """Patient coordinates of the voxel centres where ``mask`` is true."""
        return self.to_patient(np.argwhere(mask).astype(float))
