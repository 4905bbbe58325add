"""Agreement with dcm2niix (PyPI) and SimpleITK's ImageSeriesReader on real series in
../shared/data: same voxel values, spacing within 1e-3 mm, direction within 1e-4, origin
within 1e-2 mm. NIfTI output is read with SimpleITK, which converts RAS to LPS; both images
are then brought to the same axis order with DICOMOrient before comparing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from converters import load_series
from tests.shared_data import SHARED_DATA

DATA = SHARED_DATA
TOTALSEG = DATA / "totalsegmentator-ref" / "example_ct_dicom"
GE_TILT = DATA / "dcm-qa-ct" / "In" / "GE"
CT_3SLICE = DATA / "dcmqi-seg" / "data" / "segmentations" / "ct-3slice"

SPACING_MM, DIRECTION, ORIGIN_MM = 1e-3, 1e-4, 1e-2


def dcm2niix() -> str:
    found = shutil.which("dcm2niix") or str(Path(sys.executable).with_name("dcm2niix"))
    if not Path(found).exists():
        pytest.skip("dcm2niix (PyPI package) is not installed")
    return found


def need(folder: Path) -> list[Path]:
    if not folder.is_dir():
        pytest.skip(f"shared test data missing: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file())


def run_dcm2niix(folder: Path, out: Path) -> dict[str, Path]:
    """Convert ``folder``; returns {file stem: path} of the NIfTI files written."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([dcm2niix(), "-z", "n", "-b", "n", "-f", "ref", "-o", str(out), str(folder)],
                   check=True, capture_output=True, timeout=120)
    return {p.stem: p for p in out.glob("*.nii")}


def reoriented(reference: sitk.Image, like: sitk.Image) -> sitk.Image:
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(like.GetDirection())
    return sitk.DICOMOrient(reference, code)


def assert_geometry(ours: sitk.Image, reference: sitk.Image) -> sitk.Image:
    ref = reoriented(reference, ours)
    assert ours.GetSize() == ref.GetSize()
    np.testing.assert_allclose(ours.GetSpacing(), ref.GetSpacing(), atol=SPACING_MM)
    np.testing.assert_allclose(ours.GetDirection(), ref.GetDirection(), atol=DIRECTION)
    np.testing.assert_allclose(ours.GetOrigin(), ref.GetOrigin(), atol=ORIGIN_MM)
    return ref


def assert_same_values(ours: sitk.Image, reference: sitk.Image) -> None:
    ref = assert_geometry(ours, reference)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours).astype(np.float64),
                                  sitk.GetArrayFromImage(ref).astype(np.float64))


def simpleitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.fixture(scope="module")
def totalseg_volume():
    return load_series(need(TOTALSEG))


def test_totalsegmentator_vs_simpleitk(totalseg_volume) -> None:
    """JPEG 2000 lossless, 20 slices, empty Study/Series Instance UIDs."""
    assert_same_values(totalseg_volume.image, simpleitk_series(TOTALSEG))


def test_totalsegmentator_vs_dcm2niix(totalseg_volume, tmp_path: Path) -> None:
    outputs = run_dcm2niix(TOTALSEG, tmp_path)
    assert list(outputs) == ["ref"]
    assert_same_values(totalseg_volume.image, sitk.ReadImage(str(outputs["ref"])))


def test_totalsegmentator_metadata(totalseg_volume) -> None:
    meta = totalseg_volume.metadata
    assert meta.modality == "CT" and meta.rescale_intercept == -1024.0
    assert meta.series_instance_uid == "" and meta.study_instance_uid == ""
    assert meta.transfer_syntax_uids == ("1.2.840.10008.1.2.4.90",)
    assert totalseg_volume.image.GetPixelIDTypeAsString() == "16-bit signed integer"
    # the de-identified files carry their SOP UIDs only in the file meta; the loader fills
    # them in so that a SEG can reference them
    assert all(ds.SOPInstanceUID for ds in totalseg_volume.datasets)
    z = [s.sop_instance_uid[-5:] for s in totalseg_volume.sources]
    assert z == sorted(z, reverse=True)  # InstanceNumber runs head → feet, volume feet → head


def test_three_slice_ct_vs_simpleitk() -> None:
    assert_same_values(load_series(need(CT_3SLICE)).image, simpleitk_series(CT_3SLICE))


def test_ge_gantry_tilt_vs_dcm2niix_tilt_corrected(tmp_path: Path) -> None:
    """GE HiSpeed head CT, GantryDetectorTilt 18.5°, slice gaps 1.14/4.22/7.38 mm. dcm2niix
    corrects the tilt and makes slices equidistant (``ref_Tilt_Eq_1``); our resampling onto
    a regular grid must give the same grid and the same values (to within 1 HU at the edge
    of the reconstruction circle, where the two treat PixelPaddingValue slightly
    differently)."""
    files = need(GE_TILT)
    volume = load_series(files)
    assert volume.resampled
    outputs = run_dcm2niix(GE_TILT, tmp_path)
    corrected = [p for stem, p in outputs.items() if "Tilt" in stem and "Eq" in stem]
    assert len(corrected) == 1, sorted(outputs)
    ref = assert_geometry(volume.image, sitk.ReadImage(str(corrected[0])))
    ours = sitk.GetArrayFromImage(volume.image).astype(np.float64)
    theirs = sitk.GetArrayFromImage(ref).astype(np.float64)
    diff = np.abs(ours - theirs)
    assert np.mean(diff == 0) > 0.999
    assert np.mean(diff <= 1) > 0.9995
    # Away from the rim of the reconstruction circle (PixelPaddingValue −1500; the tilt moves
    # the rim by up to 5 pixels from one source plane to the next) values agree to 1 HU.
    rim = _near((ours == -1500) | (theirs == -1500))
    assert np.all(diff[~rim] <= 1)
    assert np.mean(diff[~rim] == 0) > 0.999


def _near(mask: np.ndarray) -> np.ndarray:
    """Voxels within 8 voxels in-plane or 1 slice of ``mask``."""
    from scipy.ndimage import maximum_filter

    return maximum_filter(mask.astype(np.uint8), size=(3, 17, 17)).astype(bool)


def test_ge_gantry_tilt_rejected_on_request() -> None:
    from converters.volume import GantryTiltError

    with pytest.raises(GantryTiltError, match="18.5"):
        load_series(need(GE_TILT), on_tilt="reject")
