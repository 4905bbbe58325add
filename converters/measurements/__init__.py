"""Pure measurement maths on label masks: volumes, intensities, vertebral heights, areas."""

from .geometry import Grid, frame_order, frame_planes
from .spine import (
    BodyHeights,
    RegionStatistics,
    axial_areas,
    body_heights,
    disc_height,
    minimum_area_per_level,
    nearest_frame,
    region_statistics,
    trabecular_attenuation,
)

__all__ = [
    "BodyHeights", "Grid", "frame_order", "frame_planes", "RegionStatistics", "axial_areas",
    "body_heights", "disc_height", "minimum_area_per_level", "nearest_frame",
    "region_statistics", "trabecular_attenuation",
]
