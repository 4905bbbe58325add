"""Inputs for the result-encoder tests.

``example_ct()``: the real CT series ``example_ct_dicom`` (20 axial slices, 512²) with
TotalSegmentator's ``example_seg_dicom.nii.gz`` resampled onto its grid. The files have empty
Study/Series/SOP Instance UIDs, so deterministic ones are filled in here (the assembler does
the same for such senders). ``synthetic_mr(direction)``: tests/synthetic.py's sagittal T2w
lumbar MR with a TotalSpineSeg-style label map derived from its known tissue classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from converters.vocabulary import LabelMapping
from tests import synthetic

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "totalsegmentator-ref"
if not DATA.is_dir():
    DATA = Path("/work/shared/data/totalsegmentator-ref")

#: TotalSegmentator ``total`` ids present in example_seg_dicom that the spine vocabulary knows.
TOTALSEG_MAPPING = LabelMapping(
    "totalseg", {32: "vertebra_T12", 33: "vertebra_T11", 79: "spinal_cord"}
)


@dataclass
class Case:
    datasets: list[Dataset]  # sorted along the slice normal, with pixel data
    labelmap: np.ndarray  # (frames, rows, cols) on the source grid
    mapping: LabelMapping


def sort_along_normal(datasets: list[Dataset]) -> list[Dataset]:
    iop = np.asarray(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))


def grid_image(datasets: list[Dataset]) -> sitk.Image:
    """An empty SimpleITK image on the (sorted) DICOM grid."""
    first = datasets[0]
    iop = np.asarray(first.ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    img = sitk.Image(int(first.Columns), int(first.Rows), len(datasets), sitk.sitkUInt8)
    p0 = np.asarray(first.ImagePositionPatient, float)
    dz = float(np.dot(normal, np.asarray(datasets[-1].ImagePositionPatient, float) - p0)) / (len(datasets) - 1)
    img.SetSpacing((float(first.PixelSpacing[1]), float(first.PixelSpacing[0]), dz))
    img.SetOrigin(tuple(p0))
    img.SetDirection(tuple(np.column_stack([iop[:3], iop[3:], normal]).ravel()))
    return img


def example_ct() -> Case:
    datasets = []
    for path in sorted((DATA / "example_ct_dicom").iterdir()):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["example_ct study"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["example_ct series"])
        ds.SeriesNumber = 3
        datasets.append(ds)
    datasets = sort_along_normal(datasets)
    labels = sitk.ReadImage(str(DATA / "example_seg_dicom.nii.gz"))
    on_grid = sitk.Resample(labels, grid_image(datasets), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return Case(datasets, sitk.GetArrayFromImage(on_grid), TOTALSEG_MAPPING)


def synthetic_mr(direction: np.ndarray | None = None) -> Case:
    """Sagittal (or ``direction``-oblique) T2w MR; labels from its tissue classes:
    bodies → L1..L4 by disc-separated block, discs → L1/L2.., CSF column → spinal canal."""
    kw = {"shape": (9, 48, 20)}
    if direction is not None:
        kw["direction"] = direction
    syn = synthetic.sagittal_t2_mr(**kw)
    datasets = sort_along_normal(list(syn.datasets))
    stored = np.stack([d.pixel_array for d in datasets]).astype(int)
    labels = np.zeros(stored.shape, np.uint8)
    block = np.indices(stored.shape)[1] // 12  # rows run head → feet, 12 rows per level
    body = (stored >= 480) & (stored < 600)
    disc = (stored >= 1380) & (stored < 1500)
    labels[body] = (41 + block[body]).astype(np.uint8)  # TotalSpineSeg L1..L4
    labels[disc] = (92 + block[disc]).astype(np.uint8)  # L1-L2 .. L4-L5
    labels[stored >= 1780] = 2  # canal
    from converters.vocabulary import totalspineseg

    return Case(datasets, labels, totalspineseg())
