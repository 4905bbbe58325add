"""Our label map equals nnU-Net's own command line on the same volume and weights, voxel for voxel.

Reference: ``nnUNetv2_predict_from_modelfolder -f all --disable_tta`` (``-f 0 1 2 3 4`` for the
ResEnc L ensemble), run as a subprocess on a NIfTI of the same volume. nnU-Net reads that file
with SimpleITKIO (the plans' reader, as VertebralBodiesCT was trained) and writes its result with
the same geometry, so both arrays are compared in SimpleITK's (z, y, x) order.

The volume is a synthetic CT-like int16 block (no anatomy: the weights are random) with an
anisotropic spacing different from the model's, an oblique direction and an origin offset, so
resampling and geometry are exercised.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.cli import main
from dicomnode.models.registry import ModelStore, get_entry
from dicomnode.models.weights import install

NNUNET_CLI = Path(sys.executable).with_name("nnUNetv2_predict_from_modelfolder")


def ct_volume(shape: tuple[int, int, int] = (24, 40, 36), seed: int = 3) -> sitk.Image:
    """A smooth int16 'CT' with soft tissue, a bright column and air (values in HU)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    values = 40 + 60 * np.sin(z / 3.0) * np.cos(x / 5.0) + rng.normal(0, 25, shape)
    values[(y - shape[1] // 2) ** 2 + (x - shape[2] // 2) ** 2 < 36] += 700  # "spine"
    values[:, :3, :] = -1000  # air above the table
    image = sitk.GetImageFromArray(values.astype(np.int16))
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetOrigin((-20.0, 35.5, 112.0))
    angle = np.deg2rad(8)
    image.SetDirection((1, 0, 0, 0, np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle)))
    return image


def dicom_case() -> tuple[object, sitk.Image]:
    """The faithfulness volume as a synthetic CT series (stored values + rescale −1024)."""
    from tests import synthetic

    image = ct_volume((16, 40, 36))
    stored = sitk.GetArrayFromImage(image).astype(np.int32) + 1024
    series = synthetic.single_frame_series(
        name="faithful_ct", shape=stored.shape, spacing=image.GetSpacing(),
        direction=np.array(image.GetDirection()).reshape(3, 3), origin=image.GetOrigin(),
        stored=stored)
    return series, series.expected


@pytest.fixture(scope="module")
def reference(model_folders: dict[str, Path],
              tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], np.ndarray]:
    """nnU-Net's own prediction of each case, one CLI run per model (its start-up is the slow part).

    ``-npp 1 -nps 1``: one preprocessing and one export worker, for the shared CI cores.
    """
    cases = {"nifti": ct_volume(), "dicom": dicom_case()[1]}
    folds = {"m": ["all"], "l": ["0", "1", "2", "3", "4"]}
    done: dict[str, Path] = {}

    def get(variant: str, case: str) -> np.ndarray:
        if variant not in done:
            work = tmp_path_factory.mktemp(f"reference_{variant}")
            for name, image in cases.items():
                sitk.WriteImage(image, str(work / f"{name}_0000.nii.gz"))
            run = subprocess.run(
                [str(NNUNET_CLI), "-i", str(work), "-o", str(work / "out"), "-m",
                 str(model_folders[variant]), "-f", *folds[variant], "--disable_tta",
                 "-device", "cpu", "-npp", "1", "-nps", "1"],
                capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stderr[-3000:]
            done[variant] = work / "out"
        result = sitk.ReadImage(str(done[variant] / f"{case}.nii.gz"))
        assert result.GetSize() == cases[case].GetSize()
        return sitk.GetArrayFromImage(result)

    return get


def store_with(config_file: Path, name: str, folder: Path) -> ModelStore:
    store = ModelStore(config_file.parent / "models")
    install(get_entry(name), store, [folder])
    return store


def ours(config_file: Path, source: Path, out: Path, model: str) -> sitk.Image:
    code = main(["process", str(source), "--pipeline", "vertebral-bodies-ct", "--model", model,
                 "--out", str(out), "--no-encode", "--config", str(config_file)])
    assert code == 0
    (case,) = [p for p in out.iterdir() if p.is_dir()]
    return sitk.ReadImage(str(case / "labels.nii.gz"))


@pytest.mark.parametrize("variant", ["m", "l"])
def test_process_nifti_equals_nnunet_cli(model_folders: dict[str, Path], config_file: Path,
                                        reference: Callable[[str, str], np.ndarray],
                                        tmp_path: Path, variant: str) -> None:
    image = ct_volume()
    store_with(config_file, f"vertebral-bodies-ct-{variant}", model_folders[variant])
    source = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(source))

    labelmap = ours(config_file, source, tmp_path / "out", f"vertebral-bodies-ct-{variant}")
    expected = reference(variant, "nifti")

    got = sitk.GetArrayFromImage(labelmap)
    assert len(np.unique(expected)) > 3, "random weights should predict several labels"
    assert np.array_equal(got, expected), f"{np.count_nonzero(got != expected)} voxels differ"
    for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(labelmap, attribute)(), getattr(image, attribute)(), atol=1e-5)


def test_process_dicom_series_equals_nnunet_cli(model_folders: dict[str, Path], config_file: Path,
                                               reference: Callable[[str, str], np.ndarray],
                                               tmp_path: Path) -> None:
    """The same check from a DICOM series: loaded by converters.load_series, raw voxel order."""
    from tests import synthetic

    series, _ = dicom_case()
    folder = tmp_path / "dicom"
    synthetic.write_series(series, folder)
    store_with(config_file, "vertebral-bodies-ct-m", model_folders["m"])

    labelmap = ours(config_file, folder, tmp_path / "out", "vertebral-bodies-ct-m")
    assert np.array_equal(sitk.GetArrayFromImage(labelmap), reference("m", "dicom"))


def test_nnunet_cli_is_installed() -> None:
    assert NNUNET_CLI.exists() or shutil.which("nnUNetv2_predict_from_modelfolder")
