"""DICOM Segmentation (BINARY / LABELMAP) from a label map on the source grid."""

from .writer import build_segmentation, check_source_images, segment_descriptions, tracking_uid

__all__ = ["build_segmentation", "check_source_images", "segment_descriptions", "tracking_uid"]
