"""What routing rules look at: a few series-level facts read from one header and the index."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydicom import Dataset

Orientation = Literal["axial", "sagittal", "coronal", "oblique", "unknown"]

#: A slice whose normal is within ~25° of a patient axis counts as that plane (cos 25° ≈ 0.9).
_PLANE_COSINE = 0.9


def orientation_of(dataset: Dataset) -> Orientation:
    """The acquisition plane from Image Orientation (Patient) (0020,0037).

    Enhanced multi-frame objects carry it in the Shared (or first Per-frame) Functional Groups.
    The plane is the patient axis the slice normal points along: LR → sagittal, AP → coronal,
    HF → axial; ``oblique`` when no axis is within about 25° of the normal.
    """
    iop = dataset.get("ImageOrientationPatient")
    if iop is None:
        for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            try:
                plane = getattr(dataset, groups)[0].PlaneOrientationSequence[0]
                iop = plane.ImageOrientationPatient
                break
            except (AttributeError, IndexError):
                continue
    if iop is None or len(iop) != 6:
        return "unknown"
    row, column = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(row, column)
    norm = np.linalg.norm(normal)
    if norm == 0:
        return "unknown"
    normal = np.abs(normal / norm)
    axis = int(np.argmax(normal))
    if normal[axis] < _PLANE_COSINE:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


@dataclass(frozen=True)
class SeriesFacts:
    """The attributes of a series that rules match on.

    ``slices`` is the number of image instances (or frames of a multi-frame object) received.
    """

    modality: str = ""
    body_part_examined: str = ""
    series_description: str = ""
    protocol_name: str = ""
    image_type: tuple[str, ...] = ()
    orientation: Orientation = "unknown"
    slices: int = 0
    calling_ae_title: str = ""
    sop_class_uid: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dataset(cls, dataset: Dataset, *, slices: int,
                     calling_ae_title: str = "") -> SeriesFacts:
        """Facts from one representative header of the series (any instance)."""
        image_type = dataset.get("ImageType") or ()
        if isinstance(image_type, str):
            image_type = (image_type,)
        return cls(
            modality=str(dataset.get("Modality", "") or ""),
            body_part_examined=str(dataset.get("BodyPartExamined", "") or ""),
            series_description=str(dataset.get("SeriesDescription", "") or ""),
            protocol_name=str(dataset.get("ProtocolName", "") or ""),
            image_type=tuple(str(v).upper() for v in image_type),
            orientation=orientation_of(dataset),
            slices=slices,
            calling_ae_title=calling_ae_title,
            sop_class_uid=str(dataset.get("SOPClassUID", "") or ""),
        )
