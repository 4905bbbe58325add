"""Which study and series an instance belongs to, and what kind of series that is.

One definition for the three places that group instances: the receiver's indexer (each
C-STORE), ``dicomnode process`` and ``dicomnode rules test`` (files on disk), so a folder
gives the same series, the same derived UIDs and the same verdicts whichever way it comes in.

Senders that leave Study or Series Instance UID empty (real data does) get a UID derived
deterministically (2.25 form, PS3.5 B.2) from the attributes that identify the study (with
the calling AE title) or the series: a re-send lands in the same series.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from converters.instance import frame_count

#: Top-level pixel attributes: Pixel Data, Float Pixel Data, Double Float Pixel Data.
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class StudyKey:
    """Study-level attributes of an instance (Patient/Study modules)."""

    study_instance_uid: str
    uid_synthesized: bool
    patient_id: str | None
    patient_name: str | None
    study_date: str | None
    accession_number: str | None
    study_description: str | None


@dataclass(frozen=True)
class SeriesKey:
    """Series-level attributes of an instance (General Series module)."""

    series_instance_uid: str
    uid_synthesized: bool
    modality: str | None
    series_description: str | None
    series_number: str | None
    sop_class_uid: str
    is_image: bool


class SeriesKind(StrEnum):
    """What a series is to the pipelines; the values are the reasons ``status`` shows."""

    VOLUME = "volume"                                 # can be segmented
    NOT_A_VOLUME = "not-a-volume-sop-class"           # images, but secondary captures, video…
    NOT_AN_IMAGE = "not-an-image"                     # SR, PR, KO…: no pixels


def synthesized_uid(kind: str, *parts: str) -> str:
    """A deterministic UID (2.25 form) standing in for a missing Study/Series Instance UID."""
    digest = hashlib.sha256("\x1f".join((kind, *parts)).encode("utf-8")).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _text(header: Dataset, keyword: str) -> str:
    value = header.get(keyword)
    return "" if value is None else str(value).strip()


def instance_identity(header: Dataset, calling_ae_title: str, sop_class_uid: str,
                      has_pixels: bool) -> tuple[StudyKey, SeriesKey]:
    """The study and series of an instance; empty UIDs are derived (module docstring)."""
    def text(keyword: str) -> str:
        return _text(header, keyword)

    study_uid = text("StudyInstanceUID")
    study_synth = not study_uid
    if study_synth:
        study_uid = synthesized_uid("study", calling_ae_title, text("PatientID"),
                                    text("PatientName"), text("StudyDate"), text("StudyTime"),
                                    text("AccessionNumber"), text("StudyID"))
    series_uid = text("SeriesInstanceUID")
    series_synth = not series_uid
    if series_synth:
        series_uid = synthesized_uid("series", study_uid, text("Modality"), text("SeriesNumber"),
                                     text("SeriesDescription"), text("SeriesDate"),
                                     text("SeriesTime"), text("FrameOfReferenceUID"),
                                     sop_class_uid)
    study = StudyKey(study_uid, study_synth, text("PatientID") or None,
                     text("PatientName") or None, text("StudyDate") or None,
                     text("AccessionNumber") or None, text("StudyDescription") or None)
    series = SeriesKey(series_uid, series_synth, text("Modality") or None,
                       text("SeriesDescription") or None, text("SeriesNumber") or None,
                       sop_class_uid, has_pixels)
    return study, series


def series_kind(is_image: bool, sop_class_uids: Iterable[str | None]) -> SeriesKind:
    """A series without pixels is not an image; one none of whose instances is of a class
    that forms a volume is not a volume (an unknown, empty class is left to the loader). A CT
    series that merely holds an SC page as well is a volume: the loader sets the page aside."""
    # Imported here: the converters.volume package pulls in SimpleITK, which the receiver
    # (a user of this module) does not need at start-up.
    from converters.volume.sop_classes import VOLUME_SOP_CLASSES

    if not is_image:
        return SeriesKind.NOT_AN_IMAGE
    classes = {uid.strip(" \0") for uid in sop_class_uids if uid and uid.strip(" \0")}
    if classes and not classes & VOLUME_SOP_CLASSES.keys():
        return SeriesKind.NOT_A_VOLUME
    return SeriesKind.VOLUME


@dataclass
class FileSeries:
    """The files of one series found on disk, with the header of the first."""

    study: StudyKey
    series: SeriesKey
    #: The calling AE title the study UID was derived with (as a receiver would have seen it).
    calling_ae_title: str = ""
    paths: list[Path] = field(default_factory=list)
    sop_class_uids: set[str] = field(default_factory=set)
    #: Frames of all its instances (the ``slices`` routing rules match on).
    frames: int = 0
    first_header: Dataset = field(default_factory=Dataset)

    @property
    def kind(self) -> SeriesKind:
        return series_kind(self.series.is_image, self.sop_class_uids)


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


def read_identity(path: Path, calling_ae_title: str | None = None
                  ) -> tuple[Dataset, str, StudyKey, SeriesKey]:
    """Header and identity of a DICOM file. ``calling_ae_title`` defaults to the file's Source
    Application Entity Title (0002,0016), which the node's spool files carry; the AE title
    used is returned with the header and identity. Raises
    InvalidDicomError, OSError or ValueError for what is not a DICOM file."""
    # defer_size: big values (Pixel Data) are not read, yet their presence is known.
    header = pydicom.dcmread(path, defer_size=1024)
    meta = getattr(header, "file_meta", Dataset())
    sop_class = _text(header, "SOPClassUID") or _text(meta, "MediaStorageSOPClassUID")
    calling = (calling_ae_title if calling_ae_title is not None
               else _text(meta, "SourceApplicationEntityTitle"))
    has_pixels = any(keyword in header for keyword in PIXEL_KEYWORDS)
    study, series = instance_identity(header, calling, sop_class, has_pixels)
    return header, calling, study, series


def group_files(paths: Iterable[Path], calling_ae_title: str | None = None
                ) -> tuple[list[FileSeries], list[SkippedFile]]:
    """Group DICOM files into series (in order of first appearance). Files that are not
    DICOM (DICOMDIR readers aside, notes, thumbnails) and DICOMDIR files are skipped."""
    groups: dict[str, FileSeries] = {}
    skipped: list[SkippedFile] = []
    for path in paths:
        try:
            header, calling, study, series = read_identity(path, calling_ae_title)
        except (InvalidDicomError, OSError, ValueError, AttributeError) as exc:
            skipped.append(SkippedFile(path, f"not a DICOM instance: {exc}"))
            continue
        if "DirectoryRecordSequence" in header:
            skipped.append(SkippedFile(path, "a DICOMDIR (media index), not an instance"))
            continue
        group = groups.get(series.series_instance_uid)
        if group is None:
            group = groups[series.series_instance_uid] = FileSeries(
                study, series, calling, first_header=header)
        group.paths.append(path)
        group.sop_class_uids.add(series.sop_class_uid)
        group.frames += frame_count(header)
    return list(groups.values()), skipped
