"""Instances → frames: which instances can be part of a volume, and the per-frame facts
(geometry, rescale, stack identity) read from single-frame headers or from the functional
groups of enhanced multi-frame objects.

A *frame* is one 2D image plane: a whole single-frame instance, or one frame of a
multi-frame instance. Everything later in the loader works on frames.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, SupportsFloat

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from ..instance import frame_count, is_multiframe
from .errors import PixelDataError, UnsupportedTransferSyntaxError
from .sop_classes import is_volume_sop_class

#: ImageType values that mark an image as not part of a diagnostic volume: scouts /
#: localizers, screen saves of workstations, and projections (MIP, MR angio projections).
NON_VOLUME_IMAGE_TYPES: frozenset[str] = frozenset({
    "LOCALIZER", "SCOUT", "SCREEN SAVE", "SCREENSHOT", "PROJECTION IMAGE", "CAPTURE",
})


@dataclass(frozen=True)
class SourceFrame:
    """Where one plane of the volume came from.

    ``frame_number`` is the 1-based frame of a multi-frame instance (as in DICOM's
    Referenced Frame Number) and None for a single-frame instance; which is which is
    :func:`converters.instance.is_multiframe`'s rule, the one the SEG and SR writers use.
    """

    sop_instance_uid: str
    frame_number: int | None
    sop_class_uid: str


@dataclass(frozen=True)
class StackIdentity:
    """What tells stacks of one series apart, besides orientation and position.

    ``echo``: EchoNumbers or the MR Echo functional group's EffectiveEchoTime;
    ``temporal``: TemporalPositionIdentifier / TemporalPositionIndex;
    ``b_value``: DiffusionBValue; ``stack_id``: the enhanced StackID;
    ``series``: SeriesInstanceUID (empty string when the sender left it empty).
    """

    series: str
    echo: float | None
    temporal: float | None
    b_value: float | None
    stack_id: str | None

    def sort_key(self) -> tuple[float, float, float, str]:
        """Earlier echoes / time points / lower b-values first; missing values first."""
        return (
            -1.0 if self.echo is None else self.echo,
            -1.0 if self.temporal is None else self.temporal,
            -1.0 if self.b_value is None else self.b_value,
            self.stack_id or "",
        )


@dataclass(frozen=True, eq=False)
class Frame:
    """One image plane and the header facts the loader needs.

    ``position`` is ImagePositionPatient (LPS, mm, centre of the first transmitted pixel);
    ``orientation`` is ImageOrientationPatient (row cosine then column cosine);
    ``pixel_spacing`` is PixelSpacing as DICOM writes it: (between rows, between columns);
    ``slope``/``intercept`` are the Rescale Slope/Intercept that apply to this frame;
    ``acquisition`` is AcquisitionNumber (or FrameAcquisitionNumber), used only to split
    stacks with duplicated positions; ``order`` is InstanceNumber × 10⁶ + frame number, the
    sender's own order, used only to break ties.
    """

    dataset: Dataset
    index: int | None
    source: SourceFrame
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slope: float
    intercept: float
    identity: StackIdentity
    acquisition: str
    order: int


def read_instances(items: Iterable[str | os.PathLike[str] | Dataset]
                   ) -> tuple[list[tuple[Dataset, bool]], list[tuple[str, str]]]:
    """Read paths (pixel data included) and pass datasets through.

    Returns ``[(dataset, owned)]`` — ``owned`` is True when we read the file, so the loader
    may drop its pixel data after decoding — and ``[(name, reason)]`` for unreadable files.
    """
    datasets: list[tuple[Dataset, bool]] = []
    unreadable: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, Dataset):
            datasets.append((item, False))
            continue
        try:
            datasets.append((pydicom.dcmread(item), True))
        except (InvalidDicomError, OSError, EOFError) as exc:
            unreadable.append((os.fspath(item), f"not a readable DICOM file ({exc})"))
    return datasets, unreadable


def sop_uids(ds: Dataset) -> tuple[str, str]:
    """(SOP Class UID, SOP Instance UID), from the file meta information when the dataset
    leaves them empty (some de-identification tools blank them)."""
    meta = getattr(ds, "file_meta", None) or Dataset()
    sop_class = str(value(ds, "SOPClassUID") or meta.get("MediaStorageSOPClassUID", "") or "")
    sop_instance = str(value(ds, "SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID", "")
                       or "")
    return sop_class, sop_instance


def repair_sop_uids(ds: Dataset) -> bool:
    """Copy blank SOP Class/Instance UIDs from the file meta into a dataset we read
    ourselves (a SEG must reference them); True if something was filled in."""
    sop_class, sop_instance = sop_uids(ds)
    changed = False
    if sop_class and not value(ds, "SOPClassUID"):
        ds.SOPClassUID, changed = sop_class, True
    if sop_instance and not value(ds, "SOPInstanceUID"):
        ds.SOPInstanceUID, changed = sop_instance, True
    return changed


ExclusionKind = Literal["not-a-volume-sop-class", "no-pixel-data", "non-volume-image-type",
                        "unsupported-mosaic", "colour"]


@dataclass(frozen=True)
class Exclusion:
    """Why an instance can never be part of a volume. ``kind`` lets the loader pick the
    typed error when nothing is left; ``images_in_mosaic`` is set for a mosaic whose CSA
    header says it."""

    kind: ExclusionKind
    reason: str
    sop_class_uid: str
    images_in_mosaic: int | None = None


def exclusion(ds: Dataset) -> Exclusion | None:
    """Why this instance can never be part of a volume, or None if it can. The SOP class
    decides first: an SC/SR/PR is refused for what it is, not for what it lacks."""
    sop_class = sop_uids(ds)[0]
    if not is_volume_sop_class(sop_class):
        return Exclusion("not-a-volume-sop-class",
                         f"SOPClassUID {describe_uid(sop_class)} is not a CT/MR/PET image "
                         "storage class that can form a volume", sop_class)
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        return Exclusion("no-pixel-data", f"no pixel data (SOP class {describe_uid(sop_class)})",
                         sop_class)
    image_type = value(ds, "ImageType", [])
    image_type = {str(v).upper() for v in (image_type if isinstance(image_type, (list, MultiValue))
                                           else [image_type])}
    marked = sorted(image_type & NON_VOLUME_IMAGE_TYPES)
    if marked:
        return Exclusion("non-volume-image-type",
                         f"ImageType {'/'.join(marked)} (not part of a volume)", sop_class)
    if "MOSAIC" in image_type:
        count = images_in_mosaic(ds)
        return Exclusion("unsupported-mosaic", _mosaic_text(ds, count), sop_class, count)
    if value(ds, "SamplesPerPixel", 1) != 1 or not str(
            value(ds, "PhotometricInterpretation", "MONOCHROME2")).startswith("MONOCHROME"):
        return Exclusion("colour",
                         "colour image (a screen save or rendering, not a measured volume)",
                         sop_class)
    return None


def describe_uid(uid: str) -> str:
    """``Name (uid)`` for a UID pydicom knows, the bare UID otherwise ("missing" if empty)."""
    if not uid:
        return "missing"
    name = pydicom.uid.UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def images_in_mosaic(ds: Dataset) -> int | None:
    """NumberOfImagesInMosaic of the Siemens CSA image header (0029,xx10); None when the
    header is absent (anonymisers strip private tags) or unreadable. Read only for images
    marked MOSAIC: parsing the CSA header of every Siemens slice would cost ~1 ms each."""
    try:
        with warnings.catch_warnings():  # nibabel.nicom warns on import that it is experimental
            warnings.simplefilter("ignore", UserWarning)
            from nibabel.nicom import csareader
    except ImportError:  # the count only enriches the message; refusing needs no nibabel
        return None
    try:
        header = csareader.get_csa_header(ds, "image")
        count = csareader.get_n_mosaic(header) if header else None
    except (csareader.CSAError, struct.error, ValueError, TypeError, KeyError, IndexError):
        return None
    return int(count) if count else None


def _mosaic_text(ds: Dataset, count: int | None) -> str:
    rows, columns = integer(ds, "Rows", 0), integer(ds, "Columns", 0)
    if count is None:
        return (f"unsupported Siemens mosaic (ImageType MOSAIC, one {rows}×{columns} frame; no "
                "readable CSA header (0029,1010) says how many slices it tiles)")
    per_side = math.isqrt(count - 1) + 1  # tiles fill a square grid, row by row
    return (f"unsupported Siemens mosaic: {count} slices of {rows // per_side}×"
            f"{columns // per_side} tiled in one {rows}×{columns} frame (ImageType MOSAIC, CSA "
            f"NumberOfImagesInMosaic {count})")


def _group(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """The item of functional group ``keyword`` for frame ``index``: per-frame first,
    then shared (DICOM PS3.3 C.7.6.16: a group is in exactly one of them)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        seq = per_frame[index].get(keyword)
        if seq:
            item: Dataset = seq[0]
            return item
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(keyword)
        if seq:
            shared_item: Dataset = seq[0]
            return shared_item
    return None


def _label(raw: object) -> str:
    """AcquisitionNumber etc. as a stable text label ("2", not "2.0")."""
    number = first_number(raw)
    return str(int(number)) if number is not None and number.is_integer() else str(raw or "")


def _as_float(value: object) -> float:
    """``float(value)`` for what float() takes (numbers, pydicom's DS/IS, text); TypeError
    for anything else."""
    if isinstance(value, (float, int, str, bytes, SupportsFloat)):
        return float(value)
    raise TypeError(f"not a number: {value!r}")


def first_number(value: object) -> float | None:
    """A numeric attribute as float — its first value when multi-valued (WindowCenter may
    hold several windows) — or None when absent, empty or not a number."""
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return _as_float(value)
    except (TypeError, ValueError):
        return None


_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                       "TM", "UI", "UT"})
_UNSIGNED_SHORT = struct.Struct("<H")


#: Keyword → tag for the attributes read on every frame (pydicom's keyword lookup would
#: otherwise run on every access); read-only after import.
_TAGS: dict[str, BaseTag] = {keyword: Tag(keyword) for keyword in (
    "AcquisitionNumber", "BitsAllocated", "BitsStored", "Columns", "DiffusionBValue",
    "EchoNumbers", "EchoTime", "ImageOrientationPatient", "ImagePositionPatient", "ImageType",
    "InstanceNumber", "NumberOfFrames", "PhotometricInterpretation", "PixelData",
    "PixelRepresentation", "PixelSpacing", "RescaleIntercept", "RescaleSlope", "Rows",
    "SOPClassUID", "SOPInstanceUID", "SamplesPerPixel", "SeriesInstanceUID",
    "TemporalPositionIdentifier")}


def _tag(keyword: str) -> BaseTag:
    return _TAGS.get(keyword) or Tag(keyword)


def value(ds: Dataset, keyword: str, default: object = None) -> object:
    """A top-level attribute's value, read straight from the raw element when it has not
    been converted yet: text VRs as str (list if multi-valued; DS/IS as float), US as
    int; anything else through pydicom. Empty values give ``default``.

    Why: pydicom's conversion (validated DSfloat/IS objects, hooks) costs ~0.1 ms per
    element, more than the rest of the loader on a 300-slice series."""
    try:
        element = ds.get_item(_tag(keyword))
    except KeyError:
        return default
    if element is None:
        return default
    if not isinstance(element, RawDataElement):
        result = element.value
    else:
        raw = element.value
        vr = element.VR or dictionary_VR(keyword)
        if raw is None or raw == b"":
            return default
        if vr in _TEXT_VRS:
            text = raw.decode("ascii", "replace").strip(" \0")
            parts = [part.strip() for part in text.split("\\")]
            try:
                values: list[object] = ([float(p) for p in parts] if vr in ("DS", "IS")
                                        else list(parts))
            except ValueError:
                values = [ds[keyword].value]  # odd text: let pydicom decide what it means
            result = values[0] if len(values) == 1 else values
        elif vr == "US" and len(raw) == 2 and element.is_little_endian:
            result = _UNSIGNED_SHORT.unpack(raw)[0]
        else:
            result = ds[keyword].value
    return default if result is None or result == "" else result


def numbers(ds: Dataset, keyword: str) -> list[float] | None:
    """The values of a numeric attribute as a list of floats, None when absent/empty."""
    result = value(ds, keyword)
    if result is None:
        return None
    try:
        if isinstance(result, (MultiValue, list, tuple)):
            return [_as_float(v) for v in result]
        return [_as_float(result)]
    except (TypeError, ValueError):
        return None


def integer(ds: Dataset, keyword: str, default: int | None = None) -> int:
    """An integer attribute (Rows, BitsAllocated…) of the top level; ``default`` when absent
    or empty, KeyError naming it when there is no default, ValueError when not a number."""
    raw = value(ds, keyword)
    if raw is None:
        if default is None:
            raise KeyError(keyword)
        return default
    number = first_number(raw)
    if number is None:
        raise ValueError(f"{keyword} {raw!r} is not a number")
    return int(number)


def _required(ds: Dataset, keyword: str, count: int) -> list[float]:
    """The ``count`` numbers of a geometry attribute; KeyError naming it otherwise."""
    found = numbers(ds, keyword)
    if found is None or len(found) != count:
        raise KeyError(keyword)
    return found


def frames_of(ds: Dataset) -> list[Frame]:
    """All frames of one instance; raises KeyError naming a missing geometry attribute."""
    sop_class, sop_uid = sop_uids(ds)
    rows, columns = integer(ds, "Rows"), integer(ds, "Columns")
    series = str(value(ds, "SeriesInstanceUID", ""))
    instance = int(first_number(value(ds, "InstanceNumber")) or 0)
    if not is_multiframe(ds):
        # One frame, geometry in the Image Plane Module.
        position = _required(ds, "ImagePositionPatient", 3)
        orientation = _required(ds, "ImageOrientationPatient", 6)
        spacing = _required(ds, "PixelSpacing", 2)
        slope = (numbers(ds, "RescaleSlope") or [1.0])[0]
        intercept = (numbers(ds, "RescaleIntercept") or [0.0])[0]
        identity = StackIdentity(
            series=series,
            echo=first_number(value(ds, "EchoNumbers", value(ds, "EchoTime"))),
            temporal=first_number(value(ds, "TemporalPositionIdentifier")),
            b_value=first_number(value(ds, "DiffusionBValue")),
            stack_id=None,
        )
        return [Frame(
            dataset=ds, index=None, source=SourceFrame(sop_uid, None, sop_class),
            position=np.asarray(position, float), orientation=np.asarray(orientation, float),
            pixel_spacing=(spacing[0], spacing[1]),
            rows=rows, columns=columns, slope=slope, intercept=intercept, identity=identity,
            acquisition=_label(value(ds, "AcquisitionNumber", "")), order=instance * 1_000_000)]

    # A multi-frame image: geometry in the functional groups (per-frame, else shared).
    frames = []
    for i in range(frame_count(ds)):
        plane_position = _group(ds, i, "PlanePositionSequence")
        plane_orientation = _group(ds, i, "PlaneOrientationSequence")
        measures = _group(ds, i, "PixelMeasuresSequence")
        if plane_position is None or "ImagePositionPatient" not in plane_position:
            raise KeyError("PlanePositionSequence/ImagePositionPatient")
        if plane_orientation is None or "ImageOrientationPatient" not in plane_orientation:
            raise KeyError("PlaneOrientationSequence/ImageOrientationPatient")
        if measures is None or "PixelSpacing" not in measures:
            raise KeyError("PixelMeasuresSequence/PixelSpacing")
        transform = _group(ds, i, "PixelValueTransformationSequence")
        rescale = transform if transform else ds
        frame_slope = first_number(rescale.get("RescaleSlope"))
        frame_intercept = first_number(rescale.get("RescaleIntercept"))
        content = _group(ds, i, "FrameContentSequence")
        echo = _group(ds, i, "MREchoSequence")
        diffusion = _group(ds, i, "MRDiffusionSequence")
        identity = StackIdentity(
            series=series,
            echo=first_number(echo.get("EffectiveEchoTime")) if echo else None,
            temporal=first_number(content.get("TemporalPositionIndex")) if content else None,
            b_value=first_number(diffusion.get("DiffusionBValue")) if diffusion else None,
            stack_id=str(content.get("StackID")) if content and "StackID" in content else None,
        )
        acquisition = content.get("FrameAcquisitionNumber", "") if content else ""
        frames.append(Frame(
            dataset=ds, index=i, source=SourceFrame(sop_uid, i + 1, sop_class),
            position=np.asarray(plane_position.ImagePositionPatient, float),
            orientation=np.asarray(plane_orientation.ImageOrientationPatient, float),
            pixel_spacing=(float(measures.PixelSpacing[0]), float(measures.PixelSpacing[1])),
            rows=rows, columns=columns, slope=1.0 if frame_slope is None else frame_slope,
            intercept=0.0 if frame_intercept is None else frame_intercept, identity=identity,
            acquisition=str(acquisition), order=instance * 1_000_000 + i + 1))
    return frames


_NATIVE = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                     DeflatedExplicitVRLittleEndian})


def _syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "") or "").strip(" \0") if meta is not None else ""


def undecodable(syntax: str) -> str | None:
    """Why pixel data in transfer syntax ``syntax`` cannot be decoded here, None if it can."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:  # private, video, or newer than pydicom (JPEG XL)
        return "pydicom has no decoder for it"
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "none listed"
        return f"no decoder plug-in for it is installed (missing: {missing})"
    return None


def check_decodable(frames: Sequence[Frame]) -> None:
    """Raise :class:`UnsupportedTransferSyntaxError` for the first instance whose
    TransferSyntaxUID cannot be decoded. Instances without file meta are left to pydicom,
    which then decides from the dataset's own encoding."""
    verdicts: dict[str, str | None] = {}
    seen: set[int] = set()
    for frame in frames:
        if id(frame.dataset) in seen:
            continue
        seen.add(id(frame.dataset))
        syntax = _syntax(frame.dataset)
        if not syntax:
            continue
        if syntax not in verdicts:
            verdicts[syntax] = undecodable(syntax)
        why = verdicts[syntax]
        if why is not None:
            raise UnsupportedTransferSyntaxError(
                f"cannot decode pixel data of SOP instance {frame.source.sop_instance_uid}: "
                f"TransferSyntaxUID (0002,0010) {describe_uid(syntax)}: {why}", syntax)


def _native(ds: Dataset) -> np.ndarray | None:
    """Uncompressed little-endian single-frame greyscale pixels straight from the buffer,
    with pydicom's own treatment of BitsStored (unused high bits masked, signed values
    sign-extended); None for anything else, which pydicom decodes. pydicom's generic path
    costs ~1 ms per slice in option checks."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if (syntax not in _NATIVE or "PixelData" not in ds
            or frame_count(ds) != 1
            or value(ds, "SamplesPerPixel", 1) != 1):
        return None
    allocated = integer(ds, "BitsAllocated", 0)
    stored = integer(ds, "BitsStored", allocated)
    signed = value(ds, "PixelRepresentation", 0) == 1
    if allocated not in (8, 16) or not 0 < stored <= allocated:
        return None
    dtype = np.dtype(f"{'i' if signed else 'u'}{allocated // 8}").newbyteorder("<")
    rows, columns = integer(ds, "Rows"), integer(ds, "Columns")
    buffer = value(ds, "PixelData", b"")
    if not isinstance(buffer, bytes) or len(buffer) < rows * columns * dtype.itemsize:
        return None
    arr = np.frombuffer(buffer, dtype, rows * columns).reshape(rows, columns)
    if stored < allocated:
        unused = allocated - stored
        if signed:
            arr = (arr << unused) >> unused
        else:
            arr = arr & np.array((1 << stored) - 1, dtype)
    return arr


def iter_decoded(frames: Sequence[Frame], release: Callable[[Dataset], bool] | None = None
                 ) -> Iterator[np.ndarray]:
    """Stored pixel values of each frame (Rows × Columns), in order, decoding each instance
    once with pydicom's decoders (native, RLE, JPEG, JPEG-LS, JPEG 2000 through the
    pylibjpeg/GDCM plug-ins). ``release(ds)`` True: drop a single-frame instance's
    PixelData once its frame has been handed out, so a large series is not held twice.

    Values come back in native byte order (a big-endian series decodes to ``>u2``, which
    SimpleITK and in-place numpy casts refuse). Raises
    :class:`UnsupportedTransferSyntaxError` before decoding anything when an instance's
    transfer syntax has no decoder here."""
    check_decodable(frames)
    decoded: dict[int, np.ndarray] = {}
    for frame in frames:
        ds = frame.dataset
        key = id(ds)
        if key not in decoded:
            try:
                arr = _native(ds)
                if arr is None:
                    arr = pydicom.pixels.pixel_array(ds)
            except Exception as exc:  # decoders raise many types; say which instance failed
                raise PixelDataError(
                    f"cannot decode pixel data of SOP instance {frame.source.sop_instance_uid}"
                    f" (TransferSyntaxUID {describe_uid(_syntax(ds))}): {exc}") from exc
            if not arr.dtype.isnative:
                arr = arr.astype(arr.dtype.newbyteorder("="))
            if frame.index is None:
                if release is not None and release(ds):
                    del ds.PixelData
                yield arr
                continue
            # frames of a multi-frame image by index: pydicom gives a one-frame image as
            # (Rows, Columns), without the frame axis
            decoded[key] = arr[np.newaxis] if arr.ndim == 2 else arr
        yield decoded[key][frame.index]
