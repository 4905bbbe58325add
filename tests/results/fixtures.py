"""Inputs for the result-encoder tests.

``example_ct()``: the real CT series ``example_ct_dicom`` (20 axial slices, 512²) with
TotalSegmentator's ``example_seg_dicom.nii.gz`` resampled onto its grid. The files have empty
Study/Series UIDs, so deterministic ones are filled in here; the loader repairs the blank
SOP UIDs. Both cases go through ``converters.load_series`` / ``to_source_grid``.
``synthetic_mr(oblique)``: tests/synthetic.py's sagittal (or oblique sagittal) T2w lumbar MR
with a TotalSpineSeg-style label map derived from its known tissue classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import converters
from converters.vocabulary import LabelMapping, totalspineseg
from tests import synthetic
from tests.shared_data import SHARED_DATA

DATA = SHARED_DATA / "totalsegmentator-ref"

#: TotalSegmentator ``total`` ids present in example_seg_dicom that the spine vocabulary knows.
TOTALSEG_MAPPING = LabelMapping(
    "totalseg", {32: "vertebra_T12", 33: "vertebra_T11", 79: "spinal_cord"}
)


@dataclass
class Case:
    datasets: list[Dataset]  # source datasets in the order of the label map frames
    labelmap: np.ndarray  # (frames, rows, cols) on the source grid
    mapping: LabelMapping
    image: np.ndarray | None = None  # modality values on the same frames (HU on CT)
    volume: object = None  # the converters.Volume the labels were computed on
    source_grid: object = None  # converters.SourceGrid the case was built with


def sort_along_normal(datasets: list[Dataset]) -> list[Dataset]:
    iop = np.asarray(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets,
                  key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))


def _on_source_grid(datasets: list[Dataset], labels_on_volume) -> Case:
    """Load ``datasets`` with the node's loader, compute labels on its volume, map them back."""
    volume = converters.load_series(datasets)
    labels = labels_on_volume(volume)
    grid = converters.to_source_grid(volume, labels)
    assert not volume.resampled  # the image array then lines up with the source frames
    return grid, sitk.GetArrayFromImage(volume.image).astype(np.float32), volume


def example_ct() -> Case:
    datasets = []
    for path in sorted((DATA / "example_ct_dicom").iterdir()):
        ds = pydicom.dcmread(path)
        # the assembler gives such senders' series stable UIDs; the loader repairs SOP UIDs
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["example_ct study"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["example_ct series"])
        ds.SeriesNumber = 3
        datasets.append(ds)
    nifti = sitk.ReadImage(str(DATA / "example_seg_dicom.nii.gz"))
    grid, hu, volume = _on_source_grid(datasets, lambda vol: sitk.Resample(
        nifti, vol.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    return Case(list(grid.datasets), grid.array, TOTALSEG_MAPPING, hu, volume=volume,
                source_grid=grid)


#: A true sagittal plane: rows along +y (posterior), columns along −z (feet). (At the time of
#: writing synthetic.SAGITTAL is the transpose of this, i.e. a coronal plane.)
SAGITTAL = synthetic.direction_from((0, 1, 0), (0, 0, -1))


def synthetic_mr(oblique: bool = False) -> Case:
    """Sagittal (or oblique sagittal: rotated 20° about x and 15° about z) T2w MR; labels from
    its tissue classes: bodies → L1..L4 by disc-separated block, discs → L1/L2.., CSF column
    → spinal canal."""
    direction = synthetic.oblique_direction() @ SAGITTAL if oblique else SAGITTAL
    syn = synthetic.sagittal_t2_mr(shape=(9, 48, 20), direction=direction)

    def labels_of(volume) -> np.ndarray:
        stored = sitk.GetArrayFromImage(volume.image).astype(int)  # MR: no rescale
        labels = np.zeros(stored.shape, np.uint8)
        block = np.indices(stored.shape)[1] // 12  # rows run head → feet, 12 rows per level
        body = (stored >= 480) & (stored < 600)
        disc = (stored >= 1380) & (stored < 1500)
        labels[body] = (41 + block[body]).astype(np.uint8)  # TotalSpineSeg L1..L4
        labels[disc] = (92 + block[disc]).astype(np.uint8)  # L1-L2 .. L4-L5
        labels[stored >= 1780] = 2  # canal
        return labels

    grid, values, volume = _on_source_grid(list(syn.datasets), labels_of)
    return Case(list(grid.datasets), grid.array, totalspineseg(), values, volume=volume,
                source_grid=grid)
