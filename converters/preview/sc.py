"""Preview panels → Secondary Capture Image Storage instances (highdicom)."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from ..results.identity import (
    SC_SERIES_OFFSET,
    derived_uid,
    instance_uid,
    series_description,
    series_number,
)
from ..results.metadata import PipelineMetadata
from .render import Panel


def build_secondary_captures(
    sources: Sequence[Dataset], panels: Sequence[Panel], pipeline: PipelineMetadata
) -> list[hd.sc.SCImage]:
    """One RGB Secondary Capture per panel, all in one series of the source's study.

    ``sources`` are the images the panels were made from; the first supplies the Patient /
    Study modules, all of them enter the SOP Instance UIDs.
    """
    source = sources[0]
    series_uid = derived_uid(source, pipeline, "preview")
    out = []
    for number, panel in enumerate(panels, start=1):
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=panel.rgb,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=series_number(source, SC_SERIES_OFFSET),
            sop_instance_uid=instance_uid(sources, pipeline, "preview", panel.name),
            instance_number=number,
            manufacturer=pipeline.manufacturer,
            # highdicom 0.28 annotates from_ref_dataset's pixel_spacing as tuple[int, int]
            # and passes it on to SCImage(), which declares (and writes) tuple[float, float]
            pixel_spacing=(panel.pixel_mm, panel.pixel_mm),  # type: ignore[arg-type]
            patient_orientation=panel.orientation,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=series_description(pipeline, "Spine preview"),
        )
        sc.ImageComments = f"{panel.name} reformat with segmentation overlay"
        # Laterality (General Series, 2C) must be absent for an unpaired body part, and the
        # validator only knows the part is unpaired from Body Part Examined.
        sc.BodyPartExamined = "SPINE"
        sc.BurnedInAnnotation = "YES"  # level names are drawn into the pixels
        out.append(sc)
    return out
