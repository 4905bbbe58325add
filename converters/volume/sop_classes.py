"""Which SOP classes can become a volume: an allow-list, not a deny-list.

Pure (no I/O, no pydicom), so routing can decide from the SOP Class UID in its index before
any file is opened, with the same list the loader applies to every instance.

Allowed: the cross-sectional image storage classes whose geometry the loader reads (image
plane module or the enhanced functional groups) and which a pipeline here can segment:

- CT Image, Enhanced CT Image, Legacy Converted Enhanced CT Image;
- MR Image, Enhanced MR Image, Legacy Converted Enhanced MR Image;
- Positron Emission Tomography Image, Enhanced PET Image, Legacy Converted Enhanced PET Image.

Left out on purpose (each can be added once the loader reads its geometry and a test loads
one):

- NM Image: reconstructed tomography keeps slice geometry in the Detector Information
  Sequence, which the loader does not read; planar and whole-body NM are not volumes;
- Enhanced MR Color Image: colour, which the loader refuses anyway;
- X-Ray 3D Angiographic / Craniofacial, Breast Tomosynthesis, Ophthalmic and Intravascular
  OCT, Enhanced US Volume: volumes, but of modalities no pipeline here handles;
- derived objects (Segmentation, Parametric Map, RT Dose…): results, not inputs.

Never volumes, whatever their slice count: Secondary Capture (…1.1.7 and its multi-frame
variants .7.1–.7.4, e.g. an "Exam Summary" page), presentation states, encapsulated PDF/CDA/
STL/OBJ/MTL, video, waveforms, Raw Data, SR, Key Object Selection, projection radiography.
"""

from __future__ import annotations

#: SOP Class UID → name (PS3.6 Annex A) of every class that can become a volume.
VOLUME_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
}


def is_volume_sop_class(uid: str | None) -> bool:
    """True if instances of SOP class ``uid`` can be stacked into a volume. Tolerates the
    trailing NUL/space padding of a raw UI value; None or empty is never a volume."""
    return uid is not None and uid.strip(" \0") in VOLUME_SOP_CLASSES
