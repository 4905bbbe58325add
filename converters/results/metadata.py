"""What the encoders need to know about the run: pipeline identity and output options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class PipelineMetadata:
    """Identity of the algorithm that produced the label map.

    Attributes:
        pipeline: pipeline name ("totalspineseg"); Segment Algorithm Name (0062,0009) and
            Algorithm Name (0066,0036).
        model: model / dataset name ("Dataset102_TotalSpineSeg_step2").
        weights_version: release of the weights ("r20241115"); with ``model`` it forms
            Algorithm Version (0066,0031) and enters the derived UIDs, so new weights make a
            new series while a re-run with the same weights replaces the old objects.
        software_version: Software Versions (0018,1020) of the node.
        manufacturer: Manufacturer (0008,0070) of the derived objects.
        model_name: Manufacturer's Model Name (0008,1090).
        device_serial_number: Device Serial Number (0018,1000).
        parameters: Algorithm Parameters (0066,0032), written as ``k=v`` pairs.
        stack: which volume of the source series was segmented, when one series yields
            several (echoes, separate stacks); part of the derived UIDs so that their outputs
            do not replace each other. Empty for the usual one-volume series.
    """

    pipeline: str
    model: str
    weights_version: str
    software_version: str = "0.1.0"
    manufacturer: str = "dicomnode"
    model_name: str = "dicomnode spine segmentation"
    device_serial_number: str = "0"
    parameters: Mapping[str, str] = field(default_factory=dict)
    stack: str = ""

    @property
    def algorithm_version(self) -> str:
        return f"{self.model} {self.weights_version}"[:64]


@dataclass(frozen=True)
class EncodeOptions:
    """Which objects to write and how.

    Attributes:
        segmentation_type: "BINARY" (Segmentation Storage, widest viewer support) or
            "LABELMAP" (Label Map Segmentation Storage, OHIF ≥ 3.11, much smaller).
        labelmap_compression: transfer syntax of a LABELMAP SEG: "RLE" (RLE Lossless),
            "JPEGLS" (JPEG-LS Lossless) or "NONE" (Explicit VR Little Endian).
        omit_empty_frames: leave out frames without any segment; some OHIF releases misplace
            SEGs with gaps, so sites can switch it off.
        sr: write the TID 1500 measurement report.
        preview: write the secondary capture preview.
        trabecular_erosion_mm: depth below the body surface excluded from the trabecular
            (L1) attenuation.
    """

    segmentation_type: Literal["BINARY", "LABELMAP"] = "BINARY"
    labelmap_compression: Literal["RLE", "JPEGLS", "NONE"] = "RLE"
    omit_empty_frames: bool = True
    sr: bool = True
    preview: bool = True
    trabecular_erosion_mm: float = 3.0

    def __post_init__(self) -> None:
        if self.segmentation_type not in ("BINARY", "LABELMAP"):
            raise ValueError(f"segmentation_type {self.segmentation_type!r}: BINARY or LABELMAP")
        if self.labelmap_compression not in ("RLE", "JPEGLS", "NONE"):
            raise ValueError(f"labelmap_compression {self.labelmap_compression!r}: RLE, JPEGLS "
                             "or NONE")
