"""Synthetic DICOM series for tests: small, deterministic, with a known expected volume.

Every builder returns a :class:`Synthetic`: the pydicom datasets of one series (in memory,
with ``file_meta``, ready for ``save_as`` or for ``converters.load_series``) and, where the
series should load, the expected SimpleITK volume (LPS, rescaled values, slices ascending
along the slice normal row × column, i.e. a right-handed direction matrix).

Volumes are tiny (a few thousand voxels) so the whole test suite stays fast. In-plane
sizes are non-square (rows != columns) so a transposition is caught. Stored values are a
deterministic pattern that is unique enough that flips and misordering are caught.

Functions
---------
Geometry-only building blocks:
    ``direction_from(row, col)``      3×3 direction matrix (columns: row, column, normal).
    ``oblique_direction(deg_x, deg_z)`` a rotation of the axial direction.
Single-frame series (CT Image Storage / MR Image Storage):
    ``single_frame_series(...)``      the general builder; all others call it.
    ``axial_ct()``, ``sagittal_ct()``, ``coronal_ct()``, ``oblique_ct()``
    ``flipped_ct()``                  RAS-style cosines (row −x, column −y), positions written
                                      descending along the normal.
    ``sagittal_t2_mr()``              sagittal T2w-like lumbar MR (discs bright, bodies darker,
                                      CSF column bright), uint16, no rescale.
    ``per_slice_rescale_ct()``        a different RescaleSlope/Intercept on every slice.
Enhanced multi-frame (functional groups):
    ``enhanced_ct()``                 Enhanced CT Image Storage, shared orientation/spacing,
                                      per-frame position and per-frame rescale.
    ``enhanced_mr()``                 Enhanced MR Image Storage, everything per-frame,
                                      frames stored in shuffled order.
    ``legacy_converted_ct()``         highdicom's Legacy Converted Enhanced CT from axial_ct().
Transfer syntaxes:
    ``compress(synthetic, transfer_syntax)`` re-encode every instance (pydicom encoders for
                                      RLE, JPEG-LS, JPEG 2000; GDCM for JPEG baseline/extended/
                                      lossless; deflate as a dataset encoding). Raises
                                      :class:`EncoderUnavailable` if no installed library can.
    ``COMPRESSED_SYNTAXES``           the syntaxes tests iterate over, with lossy flags.
    ``base_for(transfer_syntax)``     a series each codec can take: 8-bit for JPEG baseline and
                                      extended (GDCM writes an invalid 16-bit SOF1 header for
                                      12-bit extended data, so process 4 is not covered),
                                      ≥ 32×32 in-plane for JPEG 2000 (OpenJPEG's default
                                      6 resolution levels need it), 12-bit axial_ct otherwise.
Cases that split, fail or resample:
    ``shuffled(synthetic, seed)``     same series, random file order and InstanceNumbers.
    ``duplicated_positions(distinguish=True)`` every position twice (AcquisitionNumber 1/2,
                                      or nothing distinguishing when ``distinguish=False``).
    ``missing_slice()``               axial, 3 mm, the slice at 45 mm removed.
    ``two_stacks()``                  axial (8 slices) and sagittal (5 slices), one series.
    ``multi_echo(tag)``               sagittal MR with two interleaved stacks at the same positions
                                      told apart by ``tag``: "EchoNumbers" (echo 1/2, TE 10/90 ms),
                                      "TemporalPositionIdentifier" (1/2) or "DiffusionBValue"
                                      (0/800); ``expected`` is the first, ``notes["second"]``.
    ``with_localizer()``              axial_ct plus 2 LOCALIZER slices in the same series.
    ``gantry_tilt(deg)``              CT with GantryDetectorTilt: tilted planes, table steps.
    ``irregular_spacing()``           axial with a spacing change (3 mm then 1.5 mm).
    ``inconsistent(attr)``            one slice with different Rows/PixelSpacing/orientation.
    ``secondary_capture()``, ``screenshot()``, ``non_image()`` objects that are not volumes.
Files:
    ``write_series(synthetic, folder)`` save as ``NNN.dcm`` files, returns the paths.
"""

from __future__ import annotations

import copy
import io
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    JPEG2000,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

__all__ = [
    "COMPRESSED_SYNTAXES",
    "EncoderUnavailable",
    "Synthetic",
    "axial_ct",
    "base_for",
    "compress",
    "coronal_ct",
    "direction_from",
    "duplicated_positions",
    "enhanced_ct",
    "enhanced_mr",
    "flipped_ct",
    "gantry_tilt",
    "inconsistent",
    "irregular_spacing",
    "legacy_converted_ct",
    "missing_slice",
    "multi_echo",
    "non_image",
    "oblique_ct",
    "oblique_direction",
    "per_slice_rescale_ct",
    "sagittal_ct",
    "sagittal_t2_mr",
    "screenshot",
    "secondary_capture",
    "shuffled",
    "single_frame_series",
    "two_stacks",
    "with_localizer",
    "write_series",
]

# Deterministic UIDs make failures reproducible; the prefix is pydicom's own root.
_UID_ROOT = "1.2.826.0.1.3680043.8.498."

AXIAL = np.eye(3)
# row +y(P), col -z(I), normal -x
SAGITTAL = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]]).T
CORONAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]).T  # row +x(L), col -z


class EncoderUnavailable(RuntimeError):
    """No library installed here can encode this transfer syntax (the test should skip)."""


@dataclass
class Synthetic:
    """One synthetic series.

    ``datasets``: the instances in "file order" (the order a sender might deliver them).
    ``expected``: the volume a correct loader returns (None when the series must not load
    as-is, e.g. a missing slice, or when it is resampled).
    ``lossy``: values were lossy-compressed; compare with a tolerance.
    """

    name: str
    datasets: list[Dataset]
    expected: sitk.Image | None
    lossy: bool = False
    notes: dict[str, object] = field(default_factory=dict)


def _uid(name: str, *parts: object) -> UID:
    return generate_uid(prefix=_UID_ROOT, entropy_srcs=[name, *map(str, parts)])


def direction_from(row: Sequence[float], col: Sequence[float]) -> np.ndarray:
    """Direction matrix whose columns are the DICOM row cosine, column cosine and their
    cross product (the slice normal)."""
    r = np.asarray(row, float)
    c = np.asarray(col, float)
    return np.stack([r, c, np.cross(r, c)], axis=1)


def oblique_direction(deg_x: float = 20.0, deg_z: float = 15.0) -> np.ndarray:
    """Axial directions rotated by ``deg_x`` about x, then ``deg_z`` about z (degrees)."""
    a, b = np.radians(deg_x), np.radians(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def _pattern(shape: tuple[int, int, int], maximum: int, seed: int) -> np.ndarray:
    """Stored values: smooth ramps plus noise, distinct along every axis."""
    z, y, x = np.indices(shape)
    rng = np.random.default_rng(seed)
    base = 7 * x + 29 * y + 131 * z + rng.integers(0, 5, size=shape)
    return (base % (maximum + 1)).astype(np.int64)


def _base_dataset(name: str, modality: str, sop_class: UID, series_uid: UID) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.PatientName = "Synthetic^" + name
    ds.PatientID = "SYN-" + name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = _uid("study")
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "SYN1"
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = name
    ds.Modality = modality
    ds.Manufacturer = "dicomnode-tests"
    ds.FrameOfReferenceUID = _uid("for")
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "SPINE"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def single_frame_series(
    name: str = "axial_ct",
    shape: tuple[int, int, int] = (8, 12, 16),
    spacing: tuple[float, float, float] = (0.75, 0.8, 3.0),
    direction: np.ndarray = AXIAL,
    origin: Sequence[float] = (-6.0, -5.0, 30.0),
    modality: str = "CT",
    bits_stored: int = 12,
    rescale: Callable[[int], tuple[float, float]] | None = None,
    descending: bool = False,
    positions: Sequence[float] | None = None,
    seed: int = 0,
    stored: np.ndarray | None = None,
    series_uid: UID | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    window: tuple[float, float] | None = (40.0, 400.0),
) -> Synthetic:
    """A single-frame series on a regular grid, with its expected volume.

    ``shape`` is (slices, Rows, Columns). ``spacing`` is SimpleITK order: (column spacing,
    row spacing, slice spacing) in mm, i.e. PixelSpacing = [spacing[1], spacing[0]].
    ``direction`` columns are the row cosine, column cosine and slice normal (LPS);
    ``origin`` is ImagePositionPatient of the first slice along the normal.
    ``rescale(k)`` gives (RescaleSlope, RescaleIntercept) of slice k (CT default 1, -1024;
    MR has none). ``descending`` writes InstanceNumber 1 at the last position, as scanners
    that acquire feet-first do. ``positions`` overrides the offsets along the normal (mm;
    the expected volume is then None because the grid is irregular).
    """
    nz, ny, nx = shape
    if stored is None:
        stored = _pattern(shape, (1 << bits_stored) - 1, seed)
    if rescale is None and modality == "CT":
        rescale = lambda k: (1.0, -1024.0)  # noqa: E731 - the common CT encoding
    direction = np.asarray(direction, float)
    origin_v = np.asarray(origin, float)
    offsets = list(positions) if positions is not None else [k * spacing[2] for k in range(nz)]
    series_uid = series_uid or _uid(name, "series")
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    bits_allocated = 8 if bits_stored <= 8 else 16
    datasets = []
    order = range(nz - 1, -1, -1) if descending else range(nz)
    for number, k in enumerate(order, start=1):
        ds = _base_dataset(name, modality, sop_class, series_uid)
        ds.SOPInstanceUID = _uid(name, "sop", k)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageType = list(image_type)
        ds.InstanceNumber = number
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = [
            round(float(v), 6) for v in origin_v + offsets[k] * direction[:, 2]
        ]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in direction[:, :2].T.ravel()]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated = bits_allocated
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale(k)
            ds.RescaleType = "HU" if modality == "CT" else "US"
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        if modality == "MR":
            ds.EchoTime = 90.0
            ds.RepetitionTime = 3000.0
            ds.MagneticFieldStrength = 1.5
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "SK"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.EchoNumbers = 1
        else:
            ds.KVP = 120.0
        dtype = np.uint8 if bits_allocated == 8 else np.uint16
        ds.PixelData = stored[k].astype(dtype).tobytes()
        datasets.append(ds)

    expected = None
    if positions is None:
        values = np.empty(shape, np.float64)
        for k in range(nz):
            slope, intercept = rescale(k) if rescale else (1.0, 0.0)
            values[k] = stored[k] * slope + intercept
        expected = sitk.GetImageFromArray(_natural(values, rescale is not None))
        expected.SetSpacing([float(s) for s in spacing])
        expected.SetOrigin([float(v) for v in origin_v])
        expected.SetDirection([float(v) for v in direction.ravel()])
    return Synthetic(name, datasets, expected)


def _natural(values: np.ndarray, rescaled: bool) -> np.ndarray:
    """The pixel type the loader documents: integers stay integers (int16 when they fit,
    else int32; uint16 for unrescaled unsigned data), anything fractional is float32."""
    if not np.all(np.equal(np.mod(values, 1), 0)):
        return values.astype(np.float32)
    if not rescaled and values.min() >= 0 and values.max() <= 65535:
        return values.astype(np.uint16)
    if values.min() >= -32768 and values.max() <= 32767:
        return values.astype(np.int16)
    return values.astype(np.int32)


def axial_ct(**kw: object) -> Synthetic:
    """Axial CT, 8 slices of 12×16 at 0.8×0.75×3 mm, rescale 1/−1024."""
    return single_frame_series(**({"name": "axial_ct"} | kw))  # type: ignore[arg-type]


def sagittal_ct(**kw: object) -> Synthetic:
    """Sagittal CT (row cosine +P, column cosine −S), 6 slices 2 mm apart."""
    args = {"name": "sagittal_ct", "direction": SAGITTAL, "shape": (6, 14, 10),
            "spacing": (0.9, 0.9, 2.0), "image_type": ("DERIVED", "SECONDARY", "MPR")}
    return single_frame_series(**(args | kw))  # type: ignore[arg-type]


def coronal_ct(**kw: object) -> Synthetic:
    """Coronal CT (row +L, column −S), 5 slices 2.5 mm apart."""
    args = {"name": "coronal_ct", "direction": CORONAL, "shape": (5, 11, 13),
            "spacing": (0.7, 1.1, 2.5)}
    return single_frame_series(**(args | kw))  # type: ignore[arg-type]


def oblique_ct(**kw: object) -> Synthetic:
    """Double-oblique CT (20° about x, 15° about z)."""
    args = {"name": "oblique_ct", "direction": oblique_direction(), "shape": (7, 10, 12),
            "spacing": (0.9, 0.85, 2.2)}
    return single_frame_series(**(args | kw))  # type: ignore[arg-type]


def flipped_ct(**kw: object) -> Synthetic:
    """RAS-style cosines (row −x, column −y, so the normal is +z) with InstanceNumber 1 at the
    highest position, as a NIfTI-minded exporter writes them."""
    args = {"name": "flipped_ct", "direction": direction_from((-1, 0, 0), (0, -1, 0)),
            "origin": (6.0, 5.0, -20.0), "descending": True}
    return single_frame_series(**(args | kw))  # type: ignore[arg-type]


def per_slice_rescale_ct(**kw: object) -> Synthetic:
    """Every slice its own RescaleSlope/Intercept (some scanners and PET do this)."""
    args = {"name": "per_slice_rescale_ct", "rescale": lambda k: (0.5 + 0.25 * k, -1000.0 + k)}
    return single_frame_series(**(args | kw))  # type: ignore[arg-type]


def sagittal_t2_mr(
    shape: tuple[int, int, int] = (9, 48, 20),
    spacing: tuple[float, float, float] = (0.9, 0.9, 3.5),
    **kw: object,
) -> Synthetic:
    """Sagittal T2w-like lumbar MR: vertebral bodies (intermediate), discs (bright), a bright
    CSF column behind them and dark background; uint16 stored values, no rescale.

    Rows run head to feet (column cosine −S), columns anterior to posterior (row cosine +P).
    """
    nz, ny, nx = shape
    stored = np.full(shape, 40, np.int64)
    z, y, x = np.indices(shape)
    body = (x >= nx // 5) & (x < nx // 2) & (abs(z - nz // 2) <= nz // 3)
    disc = body & ((y % 12) >= 9)
    csf = (x >= nx // 2 + 1) & (x < nx // 2 + 4) & (abs(z - nz // 2) <= 1)
    stored[body] = 500
    stored[disc] = 1400
    stored[csf] = 1800
    stored += _pattern(shape, 30, seed=3)
    args = {"name": "sagittal_t2_mr", "modality": "MR", "direction": SAGITTAL, "shape": shape,
            "spacing": spacing, "bits_stored": 12, "stored": stored, "window": (700.0, 1600.0),
            "origin": (-15.0, -10.0, 40.0), "image_type": ("ORIGINAL", "PRIMARY", "M", "NORM")}
    syn = single_frame_series(**(args | kw))  # type: ignore[arg-type]
    for ds in syn.datasets:
        ds.SeriesDescription = "T2 TSE SAG"
        ds.SequenceName = "*tse2d1_15"
    return syn


def shuffled(syn: Synthetic, seed: int = 1) -> Synthetic:
    """Same instances in random file order, with InstanceNumbers shuffled too (so only
    ImagePositionPatient can order them)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(syn.datasets))
    numbers = rng.permutation(len(syn.datasets)) + 1
    datasets = []
    for i, j in enumerate(order):
        ds = copy.deepcopy(syn.datasets[j])
        ds.InstanceNumber = int(numbers[i])
        datasets.append(ds)
    return replace(syn, name=syn.name + "_shuffled", datasets=datasets)


def _frame_groups(position: Sequence[float], direction: np.ndarray, spacing: Sequence[float],
                  rescale: tuple[float, float] | None) -> dict[str, DicomSequence]:
    pos = Dataset()
    pos.ImagePositionPatient = [round(float(v), 6) for v in position]
    ori = Dataset()
    ori.ImageOrientationPatient = [round(float(v), 8) for v in direction[:, :2].T.ravel()]
    meas = Dataset()
    meas.PixelSpacing = [spacing[1], spacing[0]]
    meas.SliceThickness = spacing[2]
    groups = {
        "PlanePositionSequence": DicomSequence([pos]),
        "PlaneOrientationSequence": DicomSequence([ori]),
        "PixelMeasuresSequence": DicomSequence([meas]),
    }
    if rescale is not None:
        pvt = Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept = rescale
        pvt.RescaleType = "HU"
        groups["PixelValueTransformationSequence"] = DicomSequence([pvt])
    return groups


def _enhanced(name: str, modality: str, sop_class: UID, base: Synthetic,
              shared_keys: set[str], rescale: Callable[[int], tuple[float, float]] | None,
              frame_order: Sequence[int]) -> Synthetic:
    """Pack the slices of ``base`` into one multi-frame instance, frame i = slice
    ``frame_order[i]``; ``shared_keys`` go into the Shared Functional Groups."""
    src = base.datasets
    first = src[0]
    direction = np.asarray(base.expected.GetDirection()).reshape(3, 3)  # type: ignore[union-attr]
    spacing = base.expected.GetSpacing()  # type: ignore[union-attr]
    series_uid = _uid(name, "series")
    ds = _base_dataset(name, modality, sop_class, series_uid)
    ds.SOPInstanceUID = _uid(name, "sop")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.AcquisitionDateTime = "20260101120000"
    ds.Rows, ds.Columns = first.Rows, first.Columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, first.BitsStored, first.HighBit
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = len(frame_order)
    ds.BurnedInAnnotation = "NO"
    ds.ContentQualification = "RESEARCH"
    ds.DimensionOrganizationType = "3D"
    by_k = {k: d for k, d in enumerate(_sorted_by_offset(src, direction))}
    shared = Dataset()
    per_frame = []
    stored_frames = []
    for k in frame_order:
        sl = by_k[k]
        groups = _frame_groups(sl.ImagePositionPatient, direction, spacing,
                               rescale(k) if rescale else None)
        fc = Dataset()
        fc.FrameContentSequence = DicomSequence([Dataset()])
        fc.FrameContentSequence[0].InStackPositionNumber = k + 1
        fc.FrameContentSequence[0].StackID = "1"
        fc.FrameContentSequence[0].FrameAcquisitionNumber = 1
        for key, seq in groups.items():
            if key in shared_keys:
                setattr(shared, key, seq)
            else:
                setattr(fc, key, seq)
        per_frame.append(fc)
        stored_frames.append(np.frombuffer(sl.PixelData, np.uint16).reshape(ds.Rows, ds.Columns))
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    if modality == "MR":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.EchoTime = 90.0
        ds.MagneticFieldStrength = 1.5
    ds.PixelData = np.stack(stored_frames).astype(np.uint16).tobytes()

    values = np.empty(base.expected.GetSize()[::-1], np.float64)  # type: ignore[union-attr]
    for k in range(values.shape[0]):
        slope, intercept = rescale(k) if rescale else (1.0, 0.0)
        stored = np.frombuffer(by_k[k].PixelData, np.uint16).reshape(ds.Rows, ds.Columns)
        values[k] = stored * slope + intercept
    expected = sitk.GetImageFromArray(_natural(values, rescale is not None))
    expected.CopyInformation(base.expected)
    return Synthetic(name, [ds], expected)


def _sorted_by_offset(datasets: Sequence[Dataset], direction: np.ndarray) -> list[Dataset]:
    return sorted(datasets, key=lambda d: float(np.dot(direction[:, 2], d.ImagePositionPatient)))


def enhanced_ct() -> Synthetic:
    """Enhanced CT Image Storage: orientation and pixel measures shared, position and rescale
    (slope 1, intercept −1024 + 10·k) per frame, frames in descending order."""
    base = oblique_ct(name="enhanced_ct_base")
    n = base.expected.GetSize()[2]  # type: ignore[union-attr]
    return _enhanced("enhanced_ct", "CT", EnhancedCTImageStorage, base,
                     {"PlaneOrientationSequence", "PixelMeasuresSequence"},
                     lambda k: (1.0, -1024.0 + 10 * k), list(range(n - 1, -1, -1)))


def enhanced_mr() -> Synthetic:
    """Enhanced MR Image Storage: every functional group per frame, frames shuffled."""
    base = sagittal_t2_mr(name="enhanced_mr_base")
    n = base.expected.GetSize()[2]  # type: ignore[union-attr]
    order = [int(i) for i in np.random.default_rng(5).permutation(n)]
    return _enhanced("enhanced_mr", "MR", EnhancedMRImageStorage, base, set(), None, order)


def legacy_converted_ct() -> Synthetic:
    """highdicom's Legacy Converted Enhanced CT Image built from :func:`axial_ct` slices."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    base = axial_ct(name="legacy_ct_base")
    lce = LegacyConvertedEnhancedCTImage(
        legacy_datasets=base.datasets, series_instance_uid=_uid("legacy", "series"),
        series_number=2, sop_instance_uid=_uid("legacy", "sop"), instance_number=1)
    ds = pydicom.dcmread(_to_bytes(lce))
    return Synthetic("legacy_converted_ct", [ds], base.expected)


# ---------------------------------------------------------------------------------------
# Transfer syntaxes

#: (transfer syntax, lossy) pairs the tests iterate over.
COMPRESSED_SYNTAXES: list[tuple[UID, bool]] = [
    (JPEGBaseline8Bit, True),
    (JPEGExtended12Bit, True),
    (JPEGLossless, False),
    (JPEGLosslessSV1, False),
    (JPEGLSLossless, False),
    (JPEGLSNearLossless, True),
    (JPEG2000Lossless, False),
    (JPEG2000, True),
    (RLELossless, False),
    (DeflatedExplicitVRLittleEndian, False),
    (HTJ2KLossless, False),  # decodable, but no installed library encodes it: tests skip
]

_GDCM_SYNTAX = {
    JPEGBaseline8Bit: "JPEGBaselineProcess1",
    JPEGExtended12Bit: "JPEGExtendedProcess2_4",
    JPEGLossless: "JPEGLosslessProcess14",
    JPEGLosslessSV1: "JPEGLosslessProcess14_1",
}


def _to_bytes(ds: Dataset) -> io.BytesIO:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return buf


def _gdcm_encode(ds: Dataset, syntax: UID) -> Dataset:
    """Re-encode with GDCM's ImageChangeTransferSyntax (pydicom has no JPEG-1 encoder)."""
    try:
        import gdcm  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - gdcm is a project dependency
        raise EncoderUnavailable(f"{syntax.name}: python-gdcm is not installed") from exc
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.dcm"), os.path.join(tmp, "out.dcm")
        ds.save_as(src, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(src)
        if not reader.Read():
            raise EncoderUnavailable(f"{syntax.name}: GDCM could not read the source")
        change = gdcm.ImageChangeTransferSyntax()
        target = getattr(gdcm.TransferSyntax, _GDCM_SYNTAX[syntax])
        change.SetTransferSyntax(gdcm.TransferSyntax(target))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise EncoderUnavailable(f"{syntax.name}: GDCM refused to encode this image")
        writer = gdcm.ImageWriter()
        writer.SetFileName(dst)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise EncoderUnavailable(f"{syntax.name}: GDCM could not write")
        return pydicom.dcmread(dst)


def base_for(syntax: UID) -> Synthetic:
    """A series that ``compress(…, syntax)`` can encode (see the module docstring)."""
    if syntax in (JPEGBaseline8Bit, JPEGExtended12Bit):
        return axial_ct(name="axial_ct8", bits_stored=8, rescale=lambda k: (1.0, -100.0))
    if syntax in (JPEG2000, JPEG2000Lossless):
        return axial_ct(name="axial_ct_j2k", shape=(4, 36, 40))
    return axial_ct()


def compress(syn: Synthetic, syntax: UID) -> Synthetic:
    """Re-encode every instance of ``syn`` in ``syntax``; JPEG baseline needs 8-bit data, so
    use a series built with ``bits_stored=8`` for it. Raises :class:`EncoderUnavailable`."""
    out = []
    lossy = dict(COMPRESSED_SYNTAXES).get(syntax, False)
    for ds in syn.datasets:
        ds = copy.deepcopy(ds)
        if syntax == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
            ds = pydicom.dcmread(_to_bytes(ds))
        elif syntax in _GDCM_SYNTAX:
            ds = _gdcm_encode(ds, syntax)
        else:
            try:
                kwargs: dict[str, object] = {}
                if syntax == JPEGLSNearLossless:
                    kwargs["jls_error"] = 2
                elif syntax == JPEG2000:
                    kwargs["j2k_cr"] = [5]
                ds.compress(syntax, **kwargs)
            except (RuntimeError, NotImplementedError, ValueError) as exc:
                raise EncoderUnavailable(f"{syntax.name}: {exc}") from exc
            ds = pydicom.dcmread(_to_bytes(ds))
        out.append(ds)
    return replace(syn, name=f"{syn.name}_{syntax.name}", datasets=out, lossy=lossy)


# ---------------------------------------------------------------------------------------
# Series that split, fail or need resampling

def duplicated_positions(distinguish: bool = True) -> Synthetic:
    """Every position twice: a repeated acquisition. With ``distinguish`` the copies carry
    AcquisitionNumber 1 and 2; without it nothing but InstanceNumber tells them apart.
    ``expected`` is the first acquisition (the documented primary-stack choice)."""
    first = axial_ct(name="dup_a", seed=0)
    second = axial_ct(name="dup_b", seed=9, series_uid=first.datasets[0].SeriesInstanceUID)
    n = len(first.datasets)
    for i, ds in enumerate(second.datasets):
        ds.InstanceNumber = n + i + 1
        ds.AcquisitionNumber = 2 if distinguish else 1
    return Synthetic("duplicated_positions" + ("" if distinguish else "_plain"),
                     first.datasets + second.datasets, first.expected,
                     notes={"second": second.expected})


def missing_slice() -> Synthetic:
    """Axial CT at z = 30, 33, … 51 mm with the slice at 45 mm removed."""
    syn = axial_ct(name="missing_slice")
    kept = [ds for ds in syn.datasets if abs(ds.ImagePositionPatient[2] - 45.0) > 1e-6]
    return Synthetic("missing_slice", kept, None, notes={"full": syn.expected})


def two_stacks() -> Synthetic:
    """An axial stack (8 slices) and a sagittal stack (5 slices) in one series; the axial one
    is primary (more slices)."""
    ax = axial_ct(name="two_stacks_ax")
    sag = sagittal_ct(name="two_stacks_sag", shape=(5, 14, 10),
                      series_uid=ax.datasets[0].SeriesInstanceUID)
    for i, ds in enumerate(sag.datasets):
        ds.InstanceNumber = 100 + i
    return Synthetic("two_stacks", ax.datasets + sag.datasets, ax.expected,
                     notes={"secondary": sag.expected})


def multi_echo(tag: str = "EchoNumbers") -> Synthetic:
    """Two stacks at identical positions, distinguished only by ``tag`` (see the module
    docstring); InstanceNumbers interleave, as scanners write multi-echo series."""
    first = sagittal_t2_mr(name=f"multi_{tag}_1", shape=(5, 16, 12), seed=0)
    second = sagittal_t2_mr(name=f"multi_{tag}_2", shape=(5, 16, 12), seed=7,
                            series_uid=first.datasets[0].SeriesInstanceUID)
    values = {"EchoNumbers": (1, 2), "TemporalPositionIdentifier": (1, 2),
              "DiffusionBValue": (0.0, 800.0)}[tag]
    for rank, syn in enumerate((first, second)):
        for i, ds in enumerate(syn.datasets):
            ds.InstanceNumber = 2 * i + rank + 1
            setattr(ds, tag, values[rank])
            if tag == "EchoNumbers":
                ds.EchoTime = (10.0, 90.0)[rank]
    mixed = [ds for pair in zip(second.datasets, first.datasets, strict=False) for ds in pair]
    return Synthetic(f"multi_{tag}", mixed, first.expected, notes={"second": second.expected})


def with_localizer() -> Synthetic:
    """axial_ct plus two LOCALIZER slices (a coronal and a sagittal scout) in the same series."""
    syn = axial_ct(name="with_localizer")
    series_uid = syn.datasets[0].SeriesInstanceUID
    scouts = []
    for i, direction in enumerate((CORONAL, SAGITTAL)):
        s = single_frame_series(name=f"scout{i}", shape=(1, 20, 24), spacing=(1.5, 1.5, 1.0),
                                direction=direction, series_uid=series_uid,
                                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
        s.datasets[0].InstanceNumber = 50 + i
        scouts.extend(s.datasets)
    return Synthetic("with_localizer", [scouts[0], *syn.datasets, scouts[1]], syn.expected)


def gantry_tilt(deg: float = 15.0, n: int = 8, step: float = 3.0) -> Synthetic:
    """Axial CT acquired with the gantry tilted by ``deg`` about the patient's x axis: image
    planes are tilted, but slice positions step along the table (z) by ``step`` mm, so the
    stack is sheared. ``expected`` is None (the loader must resample or reject)."""
    a = np.radians(deg)
    direction = direction_from((1, 0, 0), (0, np.cos(a), -np.sin(a)))
    syn = single_frame_series(name="gantry_tilt", shape=(n, 12, 16), direction=direction,
                              spacing=(0.75, 0.8, step))
    for k, ds in enumerate(syn.datasets):
        ds.ImagePositionPatient = [-6.0, -5.0, 30.0 + k * step]
        ds.GantryDetectorTilt = deg
    return replace(syn, expected=None, notes={"tilt_deg": deg})


def irregular_spacing() -> Synthetic:
    """Axial CT whose spacing changes from 3 mm to 1.5 mm halfway (two reconstructions
    concatenated); not a missing slice, but not a uniform grid either."""
    offsets = [0.0, 3.0, 6.0, 9.0, 10.5, 12.0, 13.5, 15.0]
    return single_frame_series(name="irregular_spacing", positions=offsets)


def inconsistent(attr: str) -> Synthetic:
    """axial_ct with one slice changed: ``attr`` is "Rows" (one slice 1 row shorter),
    "PixelSpacing" (one slice at 0.9 mm) or "ImageOrientationPatient" (one slice tilted 3°)."""
    syn = axial_ct(name=f"inconsistent_{attr}")
    ds = syn.datasets[3]
    if attr == "Rows":
        ds.Rows = ds.Rows - 1
        ds.PixelData = ds.PixelData[: ds.Rows * ds.Columns * 2]
    elif attr == "PixelSpacing":
        ds.PixelSpacing = [0.9, 0.9]
    elif attr == "ImageOrientationPatient":
        d = direction_from((1, 0, 0), (0, np.cos(np.radians(3)), -np.sin(np.radians(3))))
        ds.ImageOrientationPatient = [round(float(v), 8) for v in d[:, :2].T.ravel()]
    else:
        raise ValueError(attr)
    return replace(syn, expected=None)


def secondary_capture() -> Synthetic:
    """An RGB Secondary Capture (a screenshot of a report) with no geometry."""
    ds = _base_dataset("sc", "OT", SecondaryCaptureImageStorage, _uid("sc", "series"))
    ds.SOPInstanceUID = _uid("sc", "sop")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.InstanceNumber = 1
    _rgb(ds)
    return Synthetic("secondary_capture", [ds], None)


def screenshot() -> Synthetic:
    """A CT Image Storage instance that is really a screen save (DERIVED\\SECONDARY\\SCREEN
    SAVE, RGB) — as some 3D workstations send back."""
    syn = axial_ct(name="screenshot")
    ds = syn.datasets[0]
    ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    _rgb(ds)
    return Synthetic("screenshot", [ds], None)


def _rgb(ds: Dataset) -> None:
    ds.Rows, ds.Columns = 8, 10
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    for key in ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth"):
        if key in ds:
            delattr(ds, key)
    ds.PixelData = (np.arange(8 * 10 * 3) % 256).astype(np.uint8).tobytes()


def non_image() -> Synthetic:
    """A Basic Text SR (no pixel data at all)."""
    ds = _base_dataset("sr", "SR", UID("1.2.840.10008.5.1.4.1.1.88.11"), _uid("sr", "series"))
    for key in ("SamplesPerPixel", "PhotometricInterpretation", "FrameOfReferenceUID",
                "PositionReferenceIndicator", "PatientPosition"):
        delattr(ds, key)
    ds.SOPInstanceUID = _uid("sr", "sop")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ValueType = "CONTAINER"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    return Synthetic("non_image", [ds], None)


def write_series(syn: Synthetic, folder: str | os.PathLike[str]) -> list[Path]:
    """Save every instance as ``folder/NNN.dcm`` (file order = ``syn.datasets`` order)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(syn.datasets):
        path = folder / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
