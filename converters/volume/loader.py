"""``load_series``: one DICOM series → a volume with exact geometry, and the maps between
that volume and the source frames (``to_source_grid`` / ``from_source_grid``).

Pixel type of ``Volume.image`` (values are always Modality-LUT/rescaled values, e.g. HU):

- no rescale anywhere (slope 1, intercept 0 — typical MR): the stored type (uint16, int16,
  uint8);
- integer slopes and intercepts (typical CT): int16 when the whole range that BitsStored
  allows fits after rescale, else int32 — so one protocol always gives one type;
- anything else (fractional or per-frame varying slopes, PET, resampled MR with float
  values): float32. Resampled stacks are rounded back to the integer type when there is one.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from ..instance import frame_numbers
from .errors import (
    DuplicatePositionError,
    GantryTiltError,
    IrregularSpacingError,
    NotAVolumeError,
    NotAVolumeSopClassError,
    UnsupportedMosaicError,
    VolumeError,
)
from .frames import (
    Exclusion,
    Frame,
    SourceFrame,
    describe_uid,
    exclusion,
    first_number,
    frames_of,
    iter_decoded,
    read_instances,
    repair_sop_uids,
    sop_uids,
)
from .geometry import GridCheck, Plane, check_grid, common_plane, raise_missing, sort_along_normal
from .resample import RegularGrid, frames_to_grid, grid_to_frames, regular_grid, resample
from .stacks import StackSelector, choose_stack, split_stacks

Policy = Literal["resample", "reject"]


@dataclass(frozen=True)
class VolumeMetadata:
    """Series-level facts later steps need, from the first instance of the chosen stack.

    ``rescale_slope``/``rescale_intercept`` are None when they vary between frames (the
    image holds rescaled values either way); ``window_center``/``window_width`` are the
    first VOI window, if any. Supports ``metadata["modality"]`` as well as attributes.
    """

    modality: str
    sop_class_uid: str
    frame_of_reference_uid: str
    study_instance_uid: str
    series_instance_uid: str
    series_number: int | None
    series_description: str
    patient_id: str
    patient_name: str
    study_date: str
    body_part_examined: str
    manufacturer: str
    image_type: tuple[str, ...]
    rescale_slope: float | None
    rescale_intercept: float | None
    rescale_type: str
    window_center: float | None
    window_width: float | None
    slice_thickness: float | None
    gantry_tilt_deg: float | None
    transfer_syntax_uids: tuple[str, ...]

    def __getitem__(self, key: str) -> object:
        return getattr(self, key)

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Volume:
    """A series as a volume.

    ``image``: SimpleITK image, LPS, spacing (column, row, slice) mm, origin = centre of
    voxel (0, 0, 0), direction columns = row cosine, column cosine, slice normal (right-
    handed); pixel type as in this module's docstring.
    ``sources``: the stack's source frames sorted along the normal. Unless ``resampled``,
    ``sources[k]`` is image slice k (index k along the image's third axis).
    ``datasets``: the source instances of the stack in the same order, each once (headers;
    pixel data dropped for files the loader read itself).
    ``positions``: ImagePositionPatient of each entry of ``sources`` (n × 3, mm).
    ``resampled``: the stack was sheared (gantry tilt) or irregularly spaced and was
    resampled; ``grid`` then says where each source frame sits on the image.
    ``stacks``: one line per stack found, primary/chosen first; ``excluded``:
    (SOP Instance UID or file, reason) for instances that are not part of any volume;
    ``warnings``: what a person may want to know (other stacks ignored, tilt resampled…).
    """

    image: sitk.Image
    sources: list[SourceFrame]
    datasets: list[Dataset]
    metadata: VolumeMetadata
    positions: np.ndarray
    plane: Plane
    resampled: bool = False
    grid: RegularGrid | None = None
    stacks: list[str] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class SourceGrid:
    """A label map laid out on the source frames, as highdicom's ``Segmentation`` wants it.

    ``array[i]`` (Rows × Columns, the exact pixel layout of the source frame) belongs to
    ``frames[i]``; ``datasets`` are the source instances in the order the frames use them
    (for a multi-frame source: every frame of it, in frame-number order, frames outside
    the loaded stack all zero).

    Geometry of the frames, for writers that must state it themselves (highdicom 0.28
    reads PixelMeasures/PlaneOrientation of a multi-frame source only from its Shared
    Functional Groups): ``positions[i]`` is ImagePositionPatient of ``frames[i]`` (NaN for
    frames outside the loaded stack), ``orientation`` the ImageOrientationPatient and
    ``pixel_spacing`` the PixelSpacing (row, column) shared by the stack, ``spacing_between_slices``
    the volume's slice spacing in mm.
    """

    datasets: list[Dataset]
    frames: list[SourceFrame]
    array: np.ndarray
    positions: np.ndarray
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]
    spacing_between_slices: float


def load_series(
    paths_or_datasets: Iterable[str | os.PathLike[str] | Dataset],
    *,
    select_stack: int | StackSelector | None = None,
    on_tilt: Policy = "resample",
    on_irregular: Policy = "resample",
    on_missing: Policy = "reject",
    slice_spacing: float | None = None,
    position_tolerance_mm: float = 0.01,
    orientation_tolerance: float = 1e-3,
    split_angle_deg: float = 5.0,
    min_slices: int = 2,
    keep_pixel_data: bool = False,
) -> Volume:
    """Build the volume of one series.

    ``paths_or_datasets``: files of one series (any transfer syntax pydicom can decode with
    the installed plug-ins, big endian included) or pydicom datasets; single-frame or
    enhanced multi-frame CT/MR/PET. Instances that are not cross-sectional images
    (localizers, secondary captures, screen saves, SR/PR/SEG, Siemens mosaics, colour
    images) are set aside and listed in ``excluded``; when nothing is left the error says
    why: :class:`NotAVolumeSopClassError` (no instance of a volume SOP class),
    :class:`UnsupportedMosaicError`, else :class:`NotAVolumeError`. An undecodable transfer
    syntax raises :class:`UnsupportedTransferSyntaxError` before any pixels are decoded.

    ``select_stack``: which stack to load when the series holds several (see
    :mod:`converters.volume.stacks` for how they are split): None → the primary stack (most
    frames; ties to the earliest echo/time point/acquisition); an int → index into the
    stacks in that order; a callable → receives the stacks and returns one.
    ``on_tilt``: slices stepping off the normal (GantryDetectorTilt, sheared stacks):
    "resample" onto a regular grid or "reject" (:class:`GantryTiltError`).
    ``on_irregular``: spacing along the normal varies by more than ``position_tolerance_mm``:
    "resample" or "reject" (:class:`IrregularSpacingError`).
    ``on_missing``: a gap over 1.5× the median spacing: "reject" (:class:`MissingSliceError`)
    or "resample" (fills the gap by interpolation — only for a person who knows).
    ``slice_spacing``: slice spacing (mm) of a resampled grid; default: smallest gap, at most
    twice the slice count (as dcm2niix).
    ``position_tolerance_mm``: how far a slice may sit off its regular-grid position.
    ``orientation_tolerance``: largest difference of direction cosines inside one stack.
    ``split_angle_deg``: normals further apart than this are different stacks.
    ``min_slices``: fewer frames than this in the chosen stack → :class:`NotAVolumeError`.
    ``keep_pixel_data``: keep PixelData in the datasets the loader read from files.
    """
    items = list(paths_or_datasets)
    read, excluded = read_instances(items)
    frames: list[Frame] = []
    exclusions: list[Exclusion] = []
    seen: set[str] = set()
    repaired = instances = 0
    for ds, ours in read:
        repaired += ours and repair_sop_uids(ds)
        uid = sop_uids(ds)[1]
        if uid and uid in seen:  # the same instance sent twice is one instance
            continue
        seen.add(uid)
        instances += 1
        why = exclusion(ds)
        reason = None if why is None else why.reason
        if why is None:
            try:
                frames.extend(frames_of(ds))
            except (KeyError, AttributeError, TypeError, ValueError) as exc:
                reason = f"no usable patient geometry ({exc})"
        else:
            exclusions.append(why)
        if reason is not None:
            excluded.append((uid, reason))
    if not frames:
        _raise_not_a_volume(len(items), instances, exclusions, excluded)

    stacks = split_stacks(frames, split_angle_deg, position_tolerance_mm)
    stack = choose_stack(stacks, select_stack)
    if len(stack.frames) < min_slices:
        raise NotAVolumeError(
            f"the chosen stack has {len(stack.frames)} frame(s), fewer than {min_slices}: "
            "a single image is not a volume", excluded)
    ordered = [stack, *(s for s in stacks if s is not stack)]
    warnings = [f"series holds {len(stacks)} stacks; loaded: {stack.describe()}"] \
        if len(stacks) > 1 else []
    if repaired:
        warnings.append(f"{repaired} instance(s) had empty SOP Class/Instance UIDs; taken "
                        "from their file meta information")

    plane = common_plane(stack.frames, orientation_tolerance)
    sorted_frames = sort_along_normal(stack.frames, plane.normal)
    check = check_grid(sorted_frames, plane)
    _check_duplicates(sorted_frames, check, position_tolerance_mm)
    if on_missing == "reject":
        raise_missing(check)
    resampling = _needs_resampling(sorted_frames, check, position_tolerance_mm, on_tilt,
                                   on_irregular, warnings)

    owned = {id(ds) for ds, mine in read if mine and not keep_pixel_data}
    values = iter_decoded(sorted_frames, release=lambda ds: id(ds) in owned)
    first = next(values)
    dtype = _output_dtype(sorted_frames, first.dtype)
    positions = np.stack([f.position for f in sorted_frames])
    grid = None
    if resampling:
        rescaled = [v * f.slope + f.intercept
                    for v, f in zip(itertools.chain([first], values), sorted_frames, strict=True)]
        grid = regular_grid(positions, plane, slice_spacing)
        padding = _padding(sorted_frames[0])
        outside = padding if padding is not None else min(float(r.min()) for r in rescaled)
        integer = bool(np.issubdtype(dtype, np.integer))
        array = resample(rescaled, grid, outside, padding, round_planes=integer)
        if integer:
            array = np.rint(array)
        image = sitk.GetImageFromArray(array.astype(dtype))
        image.SetOrigin([float(v) for v in grid.origin])
        image.SetSpacing(grid.spacing)
    else:
        array = np.empty((len(sorted_frames), plane.rows, plane.columns), dtype)
        decoded = zip(itertools.chain([first], values), sorted_frames, strict=True)
        for k, (v, f) in enumerate(decoded):
            if f.slope == 1.0:  # the usual CT case: one add, straight into the output type
                np.add(v, f.intercept, out=array[k], casting="unsafe")
            else:
                array[k] = v * f.slope + f.intercept
        image = sitk.GetImageFromArray(array)
        image.SetOrigin([float(v) for v in positions[0]])
        image.SetSpacing((plane.column_spacing, plane.row_spacing,
                          check.spacing if len(sorted_frames) > 1
                          else _thickness(sorted_frames[0])))
    image.SetDirection([float(v) for v in plane.direction.ravel()])
    del first, values, array

    datasets = _unique_datasets(sorted_frames)
    for ds, _ in read:
        if id(ds) in owned and "PixelData" in ds:
            del ds.PixelData
    return Volume(
        image=image, sources=[f.source for f in sorted_frames], datasets=datasets,
        metadata=_metadata(sorted_frames, datasets), positions=positions, plane=plane,
        resampled=resampling, grid=grid, stacks=[s.describe() for s in ordered],
        excluded=excluded, warnings=warnings)


def _raise_not_a_volume(given: int, instances: int, exclusions: Sequence[Exclusion],
                        excluded: list[tuple[str, str]]) -> None:
    """Nothing can form a volume: raise the error that names the reason. A mosaic comes
    first (its SOP class is a volume class, its layout is the problem); then a series in
    which no readable instance has a volume SOP class; anything else is plain."""
    mosaics = [e for e in exclusions if e.kind == "unsupported-mosaic"]
    if mosaics:
        raise UnsupportedMosaicError(
            f"{len(mosaics)} of {instances} instance(s) are Siemens mosaics (each frame tiles a "
            "whole EPI volume), which the loader does not split into slices (dcm2niix does); "
            f"first: {mosaics[0].reason}",
            excluded, next((e.images_in_mosaic for e in mosaics if e.images_in_mosaic), None))
    classes = sorted({e.sop_class_uid for e in exclusions if e.kind == "not-a-volume-sop-class"})
    if instances and len(exclusions) == instances and all(
            e.kind == "not-a-volume-sop-class" for e in exclusions):
        raise NotAVolumeSopClassError(
            f"none of the {instances} instance(s) has a SOPClassUID that can form a volume "
            f"(CT, MR or PET image storage): {', '.join(describe_uid(c) for c in classes)}",
            excluded, tuple(classes))
    detail = "; ".join(f"{uid}: {why}" for uid, why in excluded[:5])
    raise NotAVolumeError(
        f"none of the {given} instance(s) is a cross-sectional image that can form a "
        f"volume ({detail}{'; …' if len(excluded) > 5 else ''})", excluded)


def _padding(frame: Frame) -> float | None:
    """The rescaled PixelPaddingValue (value outside the reconstruction circle), if any."""
    value = frame.dataset.get("PixelPaddingValue")
    if value is None or isinstance(value, bytes):
        return None
    return float(value) * frame.slope + frame.intercept


def _thickness(frame: Frame) -> float:
    value = frame.dataset.get("SliceThickness")
    return float(value) if value else 1.0


def _check_duplicates(frames: Sequence[Frame], check: GridCheck, tolerance: float) -> None:
    gaps = np.diff(check.offsets)
    if len(gaps) and gaps.min() <= tolerance:
        k = int(np.argmin(gaps))
        raise DuplicatePositionError(
            f"two frames of the stack lie at the same position {check.offsets[k]:.2f} mm along "
            f"the normal (SOP instances {frames[k].source.sop_instance_uid} and "
            f"{frames[k + 1].source.sop_instance_uid}) and nothing tells them apart")


def _needs_resampling(frames: Sequence[Frame], check: GridCheck, tolerance: float,
                      on_tilt: Policy, on_irregular: Policy, warnings: list[str]) -> bool:
    tilt_tag = frames[0].dataset.get("GantryDetectorTilt")
    if check.sheared(tolerance):
        text = (f"slices are sheared: they step {check.shear_deg:.2f}° off the slice normal "
                f"(GantryDetectorTilt {tilt_tag if tilt_tag is not None else 'not given'}); "
                f"worst in-plane offset {check.in_plane_error_mm:.2f} mm")
        if on_tilt == "reject":
            raise GantryTiltError(text + "; load with on_tilt='resample' to correct it")
        warnings.append(text + "; resampled onto a regular grid")
        return True
    if check.irregular(tolerance) or check.missing:
        gaps = np.diff(check.offsets)
        text = (f"slice spacing varies from {gaps.min():.2f} to {gaps.max():.2f} mm "
                f"(a slice sits {check.spacing_error_mm:.2f} mm off a regular grid)")
        if on_irregular == "reject":
            raise IrregularSpacingError(text + "; load with on_irregular='resample'")
        warnings.append(text + "; resampled onto a regular grid")
        return True
    return False


def _output_dtype(frames: Sequence[Frame], stored: np.dtype) -> np.dtype:
    rescales = {(f.slope, f.intercept) for f in frames}
    if rescales == {(1.0, 0.0)}:
        return stored
    if not all(float(s).is_integer() and float(i).is_integer() for s, i in rescales):
        return np.dtype(np.float32)
    ds = frames[0].dataset
    bits = int(ds.get("BitsStored", stored.itemsize * 8))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    ends = [s * x + i for s, i in rescales for x in (lo, hi)]
    if min(ends) >= -32768 and max(ends) <= 32767:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def _unique_datasets(frames: Sequence[Frame]) -> list[Dataset]:
    out: dict[int, Dataset] = {}
    for f in frames:
        out.setdefault(id(f.dataset), f.dataset)
    return list(out.values())


def _metadata(frames: Sequence[Frame], datasets: Sequence[Dataset]) -> VolumeMetadata:
    ds = frames[0].dataset
    rescales = {(f.slope, f.intercept) for f in frames}
    slope, intercept = next(iter(rescales)) if len(rescales) == 1 else (None, None)

    return VolumeMetadata(
        modality=str(ds.get("Modality", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
        study_instance_uid=str(ds.get("StudyInstanceUID", "") or ""),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        series_number=int(ds.SeriesNumber) if ds.get("SeriesNumber") not in (None, "") else None,
        series_description=str(ds.get("SeriesDescription", "")),
        patient_id=str(ds.get("PatientID", "")),
        patient_name=str(ds.get("PatientName", "")),
        study_date=str(ds.get("StudyDate", "")),
        body_part_examined=str(ds.get("BodyPartExamined", "")),
        manufacturer=str(ds.get("Manufacturer", "")),
        image_type=tuple(str(v) for v in ds.get("ImageType", [])),
        rescale_slope=slope,
        rescale_intercept=intercept,
        rescale_type=str(ds.get("RescaleType", "HU" if ds.get("Modality") == "CT" else "")),
        window_center=first_number(ds.get("WindowCenter")),
        window_width=first_number(ds.get("WindowWidth")),
        slice_thickness=first_number(ds.get("SliceThickness")),
        gantry_tilt_deg=first_number(ds.get("GantryDetectorTilt")),
        transfer_syntax_uids=tuple(sorted({
            str(d.file_meta.get("TransferSyntaxUID", "")) for d in datasets
            if hasattr(d, "file_meta")})),
    )


def _as_label_array(volume: Volume, labelmap: sitk.Image | np.ndarray) -> np.ndarray:
    array = (sitk.GetArrayFromImage(labelmap) if isinstance(labelmap, sitk.Image)
             else np.asarray(labelmap))
    expected = volume.image.GetSize()[::-1]
    if array.shape != tuple(expected):
        raise VolumeError(f"label map shape {array.shape} (z, y, x) does not match the volume "
                          f"{tuple(expected)}")
    if array.dtype.kind not in "ui" and not np.all(np.equal(np.mod(array, 1), 0)):
        raise VolumeError("label map holds non-integer values")
    if array.size and int(array.min()) < 0:
        raise VolumeError("label map holds negative values")
    top = int(array.max()) if array.size else 0
    return array.astype(np.uint8 if top < 256 else np.uint16)


def to_source_grid(volume: Volume, labelmap: sitk.Image | np.ndarray) -> SourceGrid:
    """Put a label map computed on ``volume.image`` back onto the source frames.

    ``labelmap``: SimpleITK image on the volume grid, or a numpy array in SimpleITK's
    (z, y, x) order. Integer labels (0 = background) up to 65535.
    Returns frames in source order with uint8 (labels < 256) or uint16 arrays. A resampled
    volume is mapped back by nearest neighbour onto each source frame's own plane.
    """
    labels = _as_label_array(volume, labelmap)
    rows, columns = volume.plane.rows, volume.plane.columns
    if volume.grid is not None:
        per_frame = grid_to_frames(labels, volume.grid, rows, columns)
    else:
        per_frame = labels
    by_source = {src: k for k, src in enumerate(volume.sources)}
    frames: list[SourceFrame] = []
    planes: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    nowhere = np.full(3, np.nan)
    empty = np.zeros((rows, columns), labels.dtype)
    for ds in volume.datasets:
        sop_class, sop_uid = sop_uids(ds)
        for number in frame_numbers(ds):  # the frame numbering frames_of gave the sources
            ref = SourceFrame(sop_uid, number, sop_class)
            k = by_source.get(ref)
            frames.append(ref)
            planes.append(empty if k is None else per_frame[k])
            positions.append(nowhere if k is None else volume.positions[k])
    plane = volume.plane
    return SourceGrid(
        datasets=list(volume.datasets), frames=frames, array=np.stack(planes),
        positions=np.stack(positions),
        orientation=_orientation(plane),
        pixel_spacing=(plane.row_spacing, plane.column_spacing),
        spacing_between_slices=float(volume.image.GetSpacing()[2]))


def _orientation(plane: Plane) -> tuple[float, float, float, float, float, float]:
    """ImageOrientationPatient of the plane: row cosine, then column cosine."""
    (rx, ry, rz), (cx, cy, cz) = (float(v) for v in plane.row), (float(v) for v in plane.column)
    return rx, ry, rz, cx, cy, cz


def from_source_grid(volume: Volume, source: SourceGrid | np.ndarray) -> sitk.Image:
    """The inverse of :func:`to_source_grid`: per-frame label planes → label map on
    ``volume.image`` (nearest neighbour for a resampled volume; 0 where no frame reaches).

    ``source``: a :class:`SourceGrid`, or an array (n, Rows, Columns) whose planes follow
    ``volume.sources``.
    """
    if isinstance(source, SourceGrid):
        index = {ref: i for i, ref in enumerate(source.frames)}
        planes = np.stack([source.array[index[ref]] for ref in volume.sources])
    else:
        planes = np.asarray(source)
    labels = frames_to_grid(planes, volume.grid) if volume.grid is not None else planes
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(volume.image)
    return image
