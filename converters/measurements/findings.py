"""Which measurement applies to which vocabulary structure: label maps → spine findings."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..vocabulary import LabelMapping, Structure
from .geometry import Grid
from .spine import (
    BodyHeights,
    RegionStatistics,
    anterior_of,
    body_heights,
    disc_height,
    minimum_area_per_level,
    nearest_frame,
    region_statistics,
    trabecular_attenuation,
)


@dataclass(frozen=True)
class Layer:
    """One label map with its mapping and the structures present (segment order)."""

    mapping: LabelMapping
    labelmap: np.ndarray
    structures: Sequence[Structure]

    def mask(self, key: str, box: tuple[slice, ...] | None = None) -> np.ndarray:
        """Where the label map (or its sub-array ``box``) holds one of ``key``'s values."""
        labelmap = self.labelmap if box is None else self.labelmap[box]
        out = np.zeros(labelmap.shape, bool)
        for value in self._values(key):
            out |= labelmap == value  # ~13× faster than np.isin on a 300-slice map
        return out

    def box(self, key: str) -> tuple[slice, ...]:
        """The smallest sub-array holding every voxel of ``key``, one voxel wider on each side
        (within the array), so that its edge is background as it is in the whole map."""
        boxes = [b for v in self._values(key) if v <= len(self._boxes) and
                 (b := self._boxes[v - 1]) is not None]
        if not boxes:
            return tuple(slice(0, 0) for _ in self.labelmap.shape)
        return tuple(slice(max(min(b[axis].start for b in boxes) - 1, 0),
                           min(max(b[axis].stop for b in boxes) + 1, size))
                     for axis, size in enumerate(self.labelmap.shape))

    def _values(self, key: str) -> list[int]:
        return [v for v, k in self.mapping.labels.items() if k == key]

    @functools.cached_property
    def _boxes(self) -> list[tuple[slice, ...] | None]:
        # One pass over the label map gives every label's bounding box.
        boxes: list[tuple[slice, ...] | None] = ndimage.find_objects(self.labelmap)
        return boxes


@dataclass
class Findings:
    """Everything the SR reports, keyed by (layer name, structure key) or level.

    Attributes:
        statistics: volume, centroid and intensity per structure.
        heights: anterior/middle/posterior height of vertebral bodies.
        disc_heights: mid-depth height of discs (mm).
        trabecular_l1: (structure key, mean HU, voxel count) of the eroded L1 body (CT only).
        l3_centre: (structure key, patient z in mm, nearest frame index) of the L3 body centre.
        canal_min_area: level → smallest canal cross-section within that level (mm²).
        canal_key: the canal structure the areas belong to.
        intensity_is_hu: intensities are Hounsfield units (CT) rather than MR signal.
    """

    statistics: dict[tuple[str, str], RegionStatistics] = field(default_factory=dict)
    heights: dict[tuple[str, str], BodyHeights] = field(default_factory=dict)
    disc_heights: dict[tuple[str, str], float] = field(default_factory=dict)
    trabecular_l1: tuple[str, str, float, int] | None = None
    l3_centre: tuple[str, str, float, int] | None = None
    canal_min_area: dict[str, float] = field(default_factory=dict)
    canal_key: tuple[str, str] | None = None
    intensity_is_hu: bool = False


def _by_level(layers: Sequence[Layer], level: str) -> tuple[Layer, Structure] | None:
    """The body of ``level`` if segmented, else the whole vertebra."""
    for kind in ("body", "vertebra"):
        for layer in layers:
            for s in layer.structures:
                if s.kind == kind and s.level == level:
                    return layer, s
    return None


def _find(layers: Sequence[Layer], kinds: tuple[str, ...], key: str | None = None
          ) -> tuple[Layer, Structure] | None:
    for layer in layers:
        for s in layer.structures:
            if s.kind in kinds and (key is None or s.key == key):
                return layer, s
    return None


def _body_mask(layers: Sequence[Layer], layer: Layer, s: Structure, mask: np.ndarray,
               grid: Grid) -> np.ndarray | None:
    """The vertebral body of a per-level structure, or ``None`` when it has none.

    A body label is its own body. A whole vertebra's body is its overlap with a generic
    vertebral-body label of another label map (SPINEPS: instances × semantic corpus), else
    its part in front of the spinal canal (TotalSpineSeg: canal labelled around the cord).
    """
    if not s.level or s.kind not in ("body", "vertebra"):
        return None
    if s.kind == "body":
        return mask
    corpus = _find([ly for ly in layers if ly is not layer], ("body",), "vertebral_body")
    if corpus is not None:
        in_corpus: np.ndarray = mask & corpus[0].mask("vertebral_body")
        return in_corpus
    canal = _find(layers, ("canal",))
    if canal is None:
        return None
    region = canal[0].mask(canal[1].key)
    cord = _find([canal[0]], ("cord",))
    if cord is not None:
        region |= canal[0].mask(cord[1].key)
    return anterior_of(mask, region, grid)


def measure(
    layers: Sequence[Layer],
    grid: Grid,
    image: np.ndarray | None,
    modality: str,
    erosion_mm: float = 3.0,
) -> Findings:
    """Compute all findings.

    ``image`` holds modality values (HU after Rescale Slope/Intercept on CT) on the same grid
    as the label maps, or ``None`` (no intensity measurements).
    """
    hu = modality == "CT"
    out = Findings(intensity_is_hu=hu)
    for layer in layers:
        for s in layer.structures:
            # A structure's own measurements only need its bounding box (a few hundred
            # thousand voxels instead of the whole map); a vertebra's body needs other labels.
            box = layer.box(s.key)
            mask, sub_grid = layer.mask(s.key, box), grid.cropped(box)
            key = (layer.mapping.name, s.key)
            out.statistics[key] = region_statistics(mask, sub_grid,
                                                    None if image is None else image[box])
            if s.kind == "body" and s.level:
                out.heights[key] = body_heights(mask, sub_grid)
                continue
            body = _body_mask(layers, layer, s, layer.mask(s.key), grid) \
                if s.kind == "vertebra" else None
            if body is not None and body.any():
                out.heights[key] = body_heights(body, grid)
            elif s.kind == "disc":
                out.disc_heights[key] = disc_height(mask, sub_grid)
    l1 = _by_level(layers, "L1")
    if hu and image is not None and l1:
        layer, s = l1
        try:
            body = _body_mask(layers, layer, s, layer.mask(s.key), grid)
            if body is None or not body.any():
                raise ValueError("no vertebral body for L1")
            mean, n = trabecular_attenuation(body, grid, image, erosion_mm)
            out.trabecular_l1 = (layer.mapping.name, s.key, mean, n)
        except ValueError:
            pass  # body cut by the field of view or too small: no value rather than a wrong one
    l3 = _by_level(layers, "L3")
    if l3:
        layer, s = l3
        centroid = np.asarray(out.statistics[(layer.mapping.name, s.key)].centroid)
        frame = min(max(nearest_frame(grid, centroid), 0), layer.labelmap.shape[0] - 1)
        out.l3_centre = (layer.mapping.name, s.key, float(centroid[2]), frame)
    for layer in layers:
        keys = {s.kind: s.key for s in layer.structures if s.kind in ("canal", "cord")}
        if "canal" not in keys:
            continue
        # TotalSpineSeg and SPINEPS label the canal around the cord: the canal is both.
        canal = layer.mask(keys["canal"]) | (layer.mask(keys["cord"]) if "cord" in keys else False)
        levels = {
            s.level: found[0].mask(found[1].key)
            for lay in layers for s in lay.structures
            if s.kind in ("vertebra", "body") and s.level
            and (found := _by_level(layers, s.level)) is not None
        }
        out.canal_min_area = minimum_area_per_level(canal, levels, grid)
        out.canal_key = (layer.mapping.name, keys["canal"])
        break
    return out
