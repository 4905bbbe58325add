"""Shared fixtures: the encoder outputs for each test case, built once per session."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from converters.results import EncodeOptions, PipelineMetadata, encode_results
from tests.results.fixtures import Case, example_ct, synthetic_mr

DCIODVFY = Path(sys.executable).parent / "dciodvfy"
PIPELINE = PipelineMetadata("totalspineseg", "Dataset102_TotalSpineSeg_step2", "r20241115")


@dataclass
class Encoded:
    case: Case
    binary: list[Dataset]  # SEG, SR, SC, SC
    labelmap: list[Dataset]  # LABELMAP SEG, SR, SC, SC
    png: Path


CASES = {
    "ct": example_ct,
    "mr_sagittal": lambda: synthetic_mr(),
    "mr_oblique": lambda: synthetic_mr(oblique=True),
}
LABELMAP_SYNTAX = {"ct": "RLE", "mr_sagittal": "JPEGLS", "mr_oblique": "NONE"}


@pytest.fixture(scope="session", params=list(CASES))
def encoded(request, tmp_path_factory) -> Encoded:
    name = request.param
    case = CASES[name]()
    folder = tmp_path_factory.mktemp(name)
    png = folder / "preview.png"
    # the loader's SourceGrid as it comes (labels in .array), and plain datasets + array
    binary = encode_results(case.source_grid, None, case.mapping, PIPELINE, image=case.volume,
                            png_path=png)
    labelmap = encode_results(
        case.datasets, case.labelmap, case.mapping, PIPELINE,
        EncodeOptions(segmentation_type="LABELMAP", labelmap_compression=LABELMAP_SYNTAX[name],
                      preview=False),
        image=case.image,
    )
    return Encoded(case, binary, labelmap, png)


def dciodvfy_errors(ds: Dataset, folder: Path) -> list[str]:
    """The ``Error`` lines dciodvfy prints for ``ds`` (written to ``folder``)."""
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def patient_resample(array: np.ndarray, affine: np.ndarray, target_affine: np.ndarray,
                     target_shape: tuple[int, ...]) -> np.ndarray:
    """Put ``array`` (index → patient ``affine``) onto the target grid, which must share its
    voxel centres (exact read-back means no interpolation); voxels outside it become 0."""
    idx = np.indices(target_shape).reshape(3, -1).T.astype(float)
    pts = idx @ target_affine[:3, :3].T + target_affine[:3, 3]
    inv = np.linalg.inv(affine)
    src = pts @ inv[:3, :3].T + inv[:3, 3]
    rounded = np.rint(src)
    assert np.abs(src - rounded).max() < 1e-3, "read-back grid does not share the source voxel centres"
    rounded = rounded.astype(int)
    inside = np.all((rounded >= 0) & (rounded < np.array(array.shape)), axis=1)
    out = np.zeros(len(idx), array.dtype)
    out[inside] = array[tuple(rounded[inside].T)]
    return out.reshape(target_shape)
