"""Frames of one DICOM instance: how many, and whether they are referenced by number.

pydicom only (no numpy, SimpleITK or highdicom), so the service can import it cheaply; the
values are read from the raw elements without pydicom's value conversion.

The one rule for "multi-frame" used everywhere in converters (volume frames, source grid,
SEG source references, SR image references, measurement planes): an image is multi-frame
when its IOD contains the Multi-frame Module (PS3.3 C.7.6.6), i.e. it is the kind of image
whose frames a reference must name by Referenced Frame Number (0008,1160) — the definition
highdicom applies when it writes the SEG's source references. Without highdicom's IOD tables
that is decided as:

- never for the image storage classes whose IOD has no Multi-frame Module
  (:data:`SINGLE_FRAME_IMAGE_SOP_CLASSES`: CT, MR, PET, CR, DX, US, SC, VL…), even when a
  writer added a stray Number of Frames or functional groups to one;
- otherwise when the instance carries what a multi-frame image has: the enhanced functional
  groups (Per-frame *or* Shared Functional Groups Sequence) or a Number of Frames element,
  whatever its value (an Enhanced CT of one frame is still a multi-frame image: its frame
  is referenced as frame 1).
"""

from __future__ import annotations

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

#: Image storage SOP classes whose IOD has no Multi-frame Module (one frame per instance,
#: referenced without a frame number), per PS3.3 / PS3.4 as highdicom tabulates them.
SINGLE_FRAME_IMAGE_SOP_CLASSES: frozenset[str] = frozenset({
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image - For Processing
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography X-Ray Image - For Processing
    "1.2.840.10008.5.1.4.1.1.1.3",  # Digital Intra-Oral X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.3.1",  # Digital Intra-Oral X-Ray Image - For Processing
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.77.1.1",  # VL Endoscopic Image
    "1.2.840.10008.5.1.4.1.1.77.1.2",  # VL Microscopic Image
    "1.2.840.10008.5.1.4.1.1.77.1.3",  # VL Slide-Coordinates Microscopic Image
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic Image
    "1.2.840.10008.5.1.4.1.1.77.1.5.7",  # Ophthalmic OCT En Face Image
    "1.2.840.10008.5.1.4.1.1.77.1.7",  # Dermoscopic Photography Image
    "1.2.840.10008.5.1.4.1.1.81.1",  # Ophthalmic Thickness Map
    "1.2.840.10008.5.1.4.1.1.82.1",  # Corneal Topography Map
})

_SOP_CLASS_UID: BaseTag = Tag(0x0008, 0x0016)
_MEDIA_STORAGE_SOP_CLASS_UID: BaseTag = Tag(0x0002, 0x0002)
_NUMBER_OF_FRAMES: BaseTag = Tag(0x0028, 0x0008)
_SHARED_FUNCTIONAL_GROUPS: BaseTag = Tag(0x5200, 0x9229)
_PER_FRAME_FUNCTIONAL_GROUPS: BaseTag = Tag(0x5200, 0x9230)


def _text(ds: Dataset, tag: BaseTag) -> str:
    """A single text value (UI, IS) as str, "" when absent or empty; the raw bytes are
    decoded directly when pydicom has not converted the element yet."""
    try:
        element = ds.get_item(tag)
    except KeyError:
        return ""
    if element is None or element.value is None:
        return ""
    raw = element.value
    if isinstance(element, RawDataElement) and isinstance(raw, bytes):
        return raw.decode("ascii", "replace").strip(" \0")
    return str(raw).strip(" \0")


def sop_class_uid(ds: Dataset) -> str:
    """SOP Class UID of the instance, from the file meta information when the data set
    leaves it empty (some de-identification tools blank it); "" when neither has one."""
    uid = _text(ds, _SOP_CLASS_UID)
    if not uid:
        meta = getattr(ds, "file_meta", None)
        if isinstance(meta, Dataset):
            uid = _text(meta, _MEDIA_STORAGE_SOP_CLASS_UID)
    return uid


def frame_count(ds: Dataset) -> int:
    """Number of Frames (0028,0008); 1 when absent, empty or not a positive integer."""
    text = _text(ds, _NUMBER_OF_FRAMES)
    try:
        number = float(text)
    except ValueError:  # "" (absent/empty), several values, not a number
        return 1
    if not number.is_integer() or number < 1:  # also NaN and infinities
        return 1
    return int(number)


def is_multiframe(ds: Dataset) -> bool:
    """True for a multi-frame image (see the module docstring): its frames are referenced by
    number, 1 to :func:`frame_count`; False for an instance that is one frame referenced as
    the whole instance."""
    if sop_class_uid(ds) in SINGLE_FRAME_IMAGE_SOP_CLASSES:
        return False
    return (_PER_FRAME_FUNCTIONAL_GROUPS in ds or _SHARED_FUNCTIONAL_GROUPS in ds
            or _NUMBER_OF_FRAMES in ds)


def frame_numbers(ds: Dataset) -> list[int | None]:
    """The Referenced Frame Number of each frame of the instance, in frame order:
    ``[1, 2, …, frame_count(ds)]`` for a multi-frame image, ``[None]`` otherwise."""
    if not is_multiframe(ds):
        return [None]
    return list(range(1, frame_count(ds) + 1))
