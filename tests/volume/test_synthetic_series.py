"""Every synthetic case of tests/synthetic.py through load_series, to_source_grid and back."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import SimpleITK as sitk

import converters
from converters.volume import (
    DuplicatePositionError,
    GantryTiltError,
    InconsistentStackError,
    IrregularSpacingError,
    MissingSliceError,
    NotAVolumeError,
    StackSelectionError,
    Volume,
    from_source_grid,
    load_series,
    to_source_grid,
)
from tests import synthetic as S

LOADABLE: dict[str, Callable[[], S.Synthetic]] = {
    "axial_ct": S.axial_ct,
    "sagittal_ct": S.sagittal_ct,
    "coronal_ct": S.coronal_ct,
    "oblique_ct": S.oblique_ct,
    "flipped_ct": S.flipped_ct,
    "shuffled_oblique": lambda: S.shuffled(S.oblique_ct()),
    "shuffled_flipped": lambda: S.shuffled(S.flipped_ct(), seed=4),
    "per_slice_rescale_ct": S.per_slice_rescale_ct,
    "sagittal_t2_mr": S.sagittal_t2_mr,
    "enhanced_ct": S.enhanced_ct,
    "enhanced_mr": S.enhanced_mr,
    "legacy_converted_ct": S.legacy_converted_ct,
    "duplicated_positions": S.duplicated_positions,
    "duplicated_positions_plain": lambda: S.duplicated_positions(distinguish=False),
    "two_stacks": S.two_stacks,
    "with_localizer": S.with_localizer,
}


def assert_same_image(actual: sitk.Image, expected: sitk.Image, values_atol: float = 0.0) -> None:
    """Same grid (size, spacing, origin, direction), pixel type and values."""
    assert actual.GetSize() == expected.GetSize()
    np.testing.assert_allclose(actual.GetSpacing(), expected.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(actual.GetOrigin(), expected.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(actual.GetDirection(), expected.GetDirection(), atol=1e-6)
    a, b = sitk.GetArrayFromImage(actual), sitk.GetArrayFromImage(expected)
    if values_atol:
        np.testing.assert_allclose(a.astype(float), b.astype(float), atol=values_atol)
    else:
        assert actual.GetPixelIDTypeAsString() == expected.GetPixelIDTypeAsString()
        np.testing.assert_array_equal(a, b)


def random_labels(volume: Volume, seed: int = 0) -> np.ndarray:
    size = volume.image.GetSize()[::-1]
    return np.random.default_rng(seed).integers(0, 5, size=size).astype(np.uint8)


def assert_round_trip(volume: Volume) -> None:
    """label map → source frames → label map is the identity; each frame's plane is the
    label slice at that frame's position."""
    labels = random_labels(volume)
    grid = to_source_grid(volume, labels)
    assert grid.array.dtype == np.uint8
    assert grid.array.shape == (len(grid.frames), volume.plane.rows, volume.plane.columns)
    back = from_source_grid(volume, grid)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)
    assert back.GetOrigin() == volume.image.GetOrigin()
    for k, ref in enumerate(volume.sources):
        np.testing.assert_array_equal(grid.array[grid.frames.index(ref)], labels[k])
        np.testing.assert_array_equal(grid.positions[grid.frames.index(ref)], volume.positions[k])


@pytest.mark.parametrize("name", LOADABLE)
def test_loads_exact_volume(name: str) -> None:
    syn = LOADABLE[name]()
    volume = load_series(syn.datasets)
    assert_same_image(volume.image, syn.expected)
    assert not volume.resampled
    # sources[k] is slice k: its position is the image's slice k origin
    for k, _ in enumerate(volume.sources):
        point = volume.image.TransformIndexToPhysicalPoint((0, 0, k))
        np.testing.assert_allclose(volume.positions[k], point, atol=1e-4)
    assert_round_trip(volume)


@pytest.mark.parametrize("name", ["axial_ct", "sagittal_t2_mr", "enhanced_mr", "with_localizer"])
def test_loads_from_files(name: str, tmp_path) -> None:
    syn = LOADABLE[name]()
    paths = S.write_series(syn, tmp_path)
    volume = converters.load_series(reversed(paths))
    assert_same_image(volume.image, syn.expected)
    assert all("PixelData" not in ds for ds in volume.datasets)  # headers only, for the SEG
    assert_round_trip(volume)


def test_implicit_vr_files(tmp_path) -> None:
    """Implicit VR: raw elements carry no VR; the header fast path must look it up."""
    from pydicom.uid import ImplicitVRLittleEndian

    syn = S.oblique_ct()
    for ds in syn.datasets:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    volume = load_series(S.write_series(syn, tmp_path))
    assert_same_image(volume.image, syn.expected)


def test_sources_and_datasets_follow_slice_order() -> None:
    syn = S.shuffled(S.axial_ct())
    volume = load_series(syn.datasets)
    z = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    assert z == sorted(z)
    assert [ds.SOPInstanceUID for ds in volume.datasets] == [
        s.sop_instance_uid for s in volume.sources]
    assert all(s.frame_number is None for s in volume.sources)
    assert volume.metadata.modality == "CT"
    assert volume.metadata["rescale_intercept"] == -1024.0
    assert volume.metadata.window_center == 40.0


def test_enhanced_frames_in_source_order() -> None:
    """For a multi-frame source, SEG needs every frame in frame-number order."""
    syn = S.enhanced_mr()
    volume = load_series(syn.datasets)
    labels = random_labels(volume)
    grid = to_source_grid(volume, sitk.GetImageFromArray(labels))
    assert [f.frame_number for f in grid.frames] == list(range(1, len(volume.sources) + 1))
    assert grid.datasets == syn.datasets
    per_frame = syn.datasets[0].PerFrameFunctionalGroupsSequence
    normal = np.asarray(volume.image.GetDirection()).reshape(3, 3)[:, 2]
    for i, item in enumerate(per_frame):
        z = np.dot(item.PlanePositionSequence[0].ImagePositionPatient, normal)
        k = int(np.argmin(np.abs(volume.positions @ normal - z)))
        np.testing.assert_array_equal(grid.array[i], labels[k])


def test_enhanced_ct_per_frame_rescale() -> None:
    volume = load_series(S.enhanced_ct().datasets)
    assert volume.metadata.rescale_intercept is None  # varies per frame
    assert [s.frame_number for s in volume.sources] == list(range(7, 0, -1))


@pytest.mark.parametrize("syntax,lossy", S.COMPRESSED_SYNTAXES,
                         ids=[s.name for s, _ in S.COMPRESSED_SYNTAXES])
def test_compressed_transfer_syntaxes(syntax, lossy: bool) -> None:
    base = S.base_for(syntax)
    try:
        syn = S.compress(base, syntax)
    except S.EncoderUnavailable as exc:
        pytest.skip(f"no encoder installed: {exc}")
    assert syn.datasets[0].file_meta.TransferSyntaxUID == syntax
    volume = load_series(syn.datasets)
    # Lossy codecs at the settings of synthetic.compress stay within a few stored values.
    assert_same_image(volume.image, base.expected, values_atol=8.0 if lossy else 0.0)
    assert_round_trip(volume)


def test_missing_slice_is_reported() -> None:
    with pytest.raises(MissingSliceError) as info:
        load_series(S.missing_slice().datasets)
    assert str(info.value).startswith(
        "slice missing between positions 42.0 and 48.0 mm (median spacing 3.0 mm)")
    assert (info.value.lower_mm, info.value.upper_mm, info.value.median_mm) == (42.0, 48.0, 3.0)


def test_missing_slice_can_be_resampled_on_request() -> None:
    syn = S.missing_slice()
    volume = load_series(syn.datasets, on_missing="resample")
    assert volume.resampled
    assert volume.image.GetSize()[2] == 8
    full = sitk.GetArrayFromImage(syn.notes["full"])
    got = sitk.GetArrayFromImage(volume.image)
    np.testing.assert_array_equal(got[[0, 1, 2, 3, 4, 6, 7]], full[[0, 1, 2, 3, 4, 6, 7]])


@pytest.mark.parametrize("attr", ["Rows", "PixelSpacing", "ImageOrientationPatient"])
def test_inconsistent_stack(attr: str) -> None:
    with pytest.raises(InconsistentStackError, match="inconsistent"):
        load_series(S.inconsistent(attr).datasets)


@pytest.mark.parametrize("build", [S.secondary_capture, S.screenshot, S.non_image])
def test_non_volume_objects(build: Callable[[], S.Synthetic]) -> None:
    with pytest.raises(NotAVolumeError) as info:
        load_series(build().datasets)
    assert len(info.value.excluded) == 1


def test_localizer_is_excluded_not_loaded() -> None:
    volume = load_series(S.with_localizer().datasets)
    assert len(volume.excluded) == 2
    assert all("LOCALIZER" in why for _, why in volume.excluded)
    assert len(volume.stacks) == 1
    only_scouts = [ds for ds in S.with_localizer().datasets if "LOCALIZER" in ds.ImageType]
    with pytest.raises(NotAVolumeError):
        load_series(only_scouts)


def test_two_stacks_primary_and_override() -> None:
    syn = S.two_stacks()
    volume = load_series(syn.datasets)
    assert len(volume.stacks) == 2 and volume.warnings
    other = load_series(syn.datasets, select_stack=1)
    assert_same_image(other.image, syn.notes["secondary"])
    picked = load_series(syn.datasets,
                         select_stack=lambda stacks: min(stacks, key=lambda s: len(s.frames)))
    assert_same_image(picked.image, syn.notes["secondary"])
    with pytest.raises(StackSelectionError):
        load_series(syn.datasets, select_stack=5)


@pytest.mark.parametrize("tag", ["EchoNumbers", "TemporalPositionIdentifier", "DiffusionBValue"])
def test_echoes_time_points_b_values_split(tag: str) -> None:
    syn = S.multi_echo(tag)
    first = load_series(syn.datasets)
    assert_same_image(first.image, syn.expected)
    assert len(first.stacks) == 2
    assert_same_image(load_series(syn.datasets, select_stack=1).image, syn.notes["second"])


def test_b_values_split_from_files(tmp_path) -> None:
    """DiffusionBValue is binary (FD) in files: read through pydicom, not as text."""
    syn = S.multi_echo("DiffusionBValue")
    paths = S.write_series(syn, tmp_path)
    volume = load_series(
        paths, select_stack=lambda stacks: max(stacks, key=lambda s: s.identity.b_value))
    assert_same_image(volume.image, syn.notes["second"])
    assert "b-value 800.0" in volume.stacks[0]


@pytest.mark.parametrize("distinguish", [True, False])
def test_duplicated_positions_split(distinguish: bool) -> None:
    syn = S.duplicated_positions(distinguish)
    second = load_series(syn.datasets, select_stack=1)
    assert_same_image(second.image, syn.notes["second"])


def test_single_repeated_slice_becomes_its_own_stack() -> None:
    syn = S.axial_ct()
    twin = copy.deepcopy(syn.datasets[2])
    twin.SOPInstanceUID = "1.2.3.4"
    volume = load_series([*syn.datasets, twin])
    assert_same_image(volume.image, syn.expected)
    assert len(volume.stacks) == 2 and "repeat 1" in volume.stacks[0]


def test_same_instance_twice_counts_once() -> None:
    syn = S.axial_ct()
    volume = load_series([*syn.datasets, copy.deepcopy(syn.datasets[4])])
    assert_same_image(volume.image, syn.expected)
    assert len(volume.stacks) == 1


def test_near_duplicate_that_escapes_splitting_is_an_error() -> None:
    """Positions 0.0002 mm apart that fall on both sides of the splitter's rounding."""
    syn = S.axial_ct()
    twin = copy.deepcopy(syn.datasets[2])
    twin.SOPInstanceUID = "1.2.3.4"
    syn.datasets[2].ImagePositionPatient = [-6.0, -5.0, 36.0499]
    twin.ImagePositionPatient = [-6.0, -5.0, 36.0501]
    with pytest.raises(DuplicatePositionError, match="same position"):
        load_series([*syn.datasets, twin])


def test_gantry_tilt_rejected_or_resampled() -> None:
    syn = S.gantry_tilt()
    with pytest.raises(GantryTiltError, match="15.00°"):
        load_series(syn.datasets, on_tilt="reject")
    volume = load_series(syn.datasets)
    assert volume.resampled and any("sheared" in w for w in volume.warnings)
    direction = np.asarray(volume.image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-9)
    a = np.radians(15.0)
    # slices 3 mm apart along the table are 3·cos(15°) apart along the normal
    assert volume.image.GetSpacing()[2] == pytest.approx(3.0 * np.cos(a))
    assert volume.image.GetSize()[2] == 8
    _source_round_trip(volume)


def test_irregular_spacing_rejected_or_resampled() -> None:
    syn = S.irregular_spacing()
    with pytest.raises(IrregularSpacingError):
        load_series(syn.datasets, on_irregular="reject")
    volume = load_series(syn.datasets)
    assert volume.resampled
    assert volume.image.GetSpacing()[2] == pytest.approx(1.5)
    # planes that coincide with a source slice carry its values unchanged
    got = sitk.GetArrayFromImage(volume.image)
    for k, offset in enumerate([0.0, 3.0, 6.0, 9.0, 10.5, 12.0, 13.5, 15.0]):
        stored = np.frombuffer(syn.datasets[k].PixelData, np.uint16).reshape(12, 16)
        np.testing.assert_array_equal(got[int(round(offset / 1.5))], stored.astype(np.int16) - 1024)
    _source_round_trip(volume)


def _source_round_trip(volume: Volume) -> None:
    """On a resampled volume the exact round trip is source frames → volume → source frames
    (the grid is at least as fine as the source, so no source pixel is lost)."""
    rng = np.random.default_rng(3)
    planes = rng.integers(0, 4, size=(len(volume.sources), volume.plane.rows,
                                      volume.plane.columns)).astype(np.uint8)
    on_volume = from_source_grid(volume, planes)
    again = to_source_grid(volume, on_volume)
    np.testing.assert_array_equal(again.array, planes)


def test_label_map_checks() -> None:
    volume = load_series(S.axial_ct().datasets)
    with pytest.raises(converters.VolumeError, match="shape"):
        to_source_grid(volume, np.zeros((2, 2, 2), np.uint8))
    big = random_labels(volume).astype(np.uint16) * 100
    assert to_source_grid(volume, big).array.dtype == np.uint16
