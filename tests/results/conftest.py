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
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def patient_resample(array: np.ndarray, affine: np.ndarray, target_affine: np.ndarray,
                     target_shape: tuple[int, ...]) -> np.ndarray:
    """Put ``array`` (index → patient ``affine``) onto the target grid, which must share its
    voxel centres and axes up to order and sign (exact read-back means no interpolation);
    voxels outside ``array`` become 0."""
    m = np.linalg.inv(affine) @ target_affine  # target index → source index
    perm = np.rint(m[:3, :3])
    assert np.abs(m[:3, :3] - perm).max() < 1e-3, "read-back axes differ from the source's"
    assert (np.abs(perm).sum(axis=0) == 1).all(), "read-back axes are not a permutation"
    offset = np.rint(m[:3, 3])
    assert np.abs(m[:3, 3] - offset).max() < 1e-3, "read-back voxel centres are shifted"
    src_axis = np.abs(perm).argmax(axis=0)  # source axis of each target axis
    sign = perm[src_axis, range(3)]
    idx = [(sign[j] * np.arange(target_shape[j]) + offset[src_axis[j]]).astype(int)
           for j in range(3)]
    valid = [(i >= 0) & (i < array.shape[src_axis[j]]) for j, i in enumerate(idx)]
    out = np.zeros(target_shape, array.dtype)
    moved = array.transpose(src_axis)
    out[np.ix_(*valid)] = moved[np.ix_(*(i[v] for i, v in zip(idx, valid, strict=True)))]
    return out
