"""Objects that must never become volumes, each refused with its own typed error: SOP classes
outside the volume allow-list (whatever their slice count or geometry) and Siemens mosaics."""

from __future__ import annotations

import copy
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    EnhancedPETImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    LegacyConvertedEnhancedPETImageStorage,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

from converters.volume import (
    NotAVolumeError,
    NotAVolumeSopClassError,
    UnsupportedMosaicError,
    is_volume_sop_class,
    load_series,
)
from tests import synthetic as S
from tests.volume.test_synthetic_series import assert_same_image

VOLUME_CLASSES = [
    CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage,
    MRImageStorage, EnhancedMRImageStorage, LegacyConvertedEnhancedMRImageStorage,
    PositronEmissionTomographyImageStorage, EnhancedPETImageStorage,
    LegacyConvertedEnhancedPETImageStorage,
]

SECONDARY_CAPTURE = [
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
]

OTHER_NON_VOLUME = [
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.104.2",  # Encapsulated CDA
    "1.2.840.10008.5.1.4.1.1.104.3",  # Encapsulated STL
    "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # Video Photographic
    "1.2.840.10008.5.1.4.1.1.77.1.1.1",  # Video Endoscopic
    "1.2.840.10008.5.1.4.1.1.9.1.1",  # 12-lead ECG Waveform
    "1.2.840.10008.5.1.4.1.1.66",  # Raw Data
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound
    "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine (geometry the loader does not read)
    "1.2.840.10008.5.1.4.1.1.4.2",  # MR Spectroscopy
    "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map
    "",
    "not-a-uid",
]


@pytest.mark.parametrize("uid", VOLUME_CLASSES)
def test_volume_sop_classes_are_allowed(uid: str) -> None:
    assert is_volume_sop_class(uid)
    assert is_volume_sop_class(uid + "\0")  # UI values may carry their NUL padding


@pytest.mark.parametrize("uid", SECONDARY_CAPTURE + OTHER_NON_VOLUME)
def test_other_sop_classes_are_not(uid: str) -> None:
    assert not is_volume_sop_class(uid)


def _as_sop_class(syn: S.Synthetic, uid: str) -> list[Dataset]:
    out = []
    for ds in syn.datasets:
        ds = copy.deepcopy(ds)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = uid
        out.append(ds)
    return out


@pytest.mark.parametrize("uid", SECONDARY_CAPTURE)
def test_secondary_capture_with_volume_geometry_is_refused(uid: str) -> None:
    """An "Exam Summary" SC: 40 greyscale slices with perfect CT geometry is still no volume."""
    datasets = _as_sop_class(S.axial_ct(name="exam_summary", shape=(40, 12, 16)), uid)
    with pytest.raises(NotAVolumeSopClassError) as info:
        load_series(datasets)
    error = info.value
    assert isinstance(error, NotAVolumeError)
    assert error.kind == "not-a-volume-sop-class"
    assert error.sop_class_uids == (uid,)
    assert uid in str(error) and "SOPClassUID" in str(error)
    assert len(error.excluded) == 40


def test_refusal_names_the_sop_class() -> None:
    datasets = _as_sop_class(S.axial_ct(), SECONDARY_CAPTURE[0])
    with pytest.raises(NotAVolumeSopClassError, match="Secondary Capture Image Storage"):
        load_series(datasets)


def test_sop_class_from_file_meta_when_the_dataset_leaves_it_empty(tmp_path: Path) -> None:
    datasets = _as_sop_class(S.axial_ct(), SECONDARY_CAPTURE[0])
    for ds in datasets:
        ds.SOPClassUID = ""
    with pytest.raises(NotAVolumeSopClassError):
        load_series(S.write_series(S.Synthetic("blank", datasets, None), tmp_path))


def test_sr_is_refused_for_its_sop_class() -> None:
    with pytest.raises(NotAVolumeSopClassError) as info:
        load_series(S.non_image().datasets)
    assert info.value.sop_class_uids == ("1.2.840.10008.5.1.4.1.1.88.11",)


def test_secondary_capture_inside_a_ct_series_is_set_aside() -> None:
    syn = S.axial_ct()
    summary = _as_sop_class(S.axial_ct(name="summary", shape=(1, 12, 16)), SECONDARY_CAPTURE[0])
    summary[0].SeriesInstanceUID = syn.datasets[0].SeriesInstanceUID
    volume = load_series([*syn.datasets, *summary])
    assert_same_image(volume.image, syn.expected)
    assert [uid for uid, _ in volume.excluded] == [summary[0].SOPInstanceUID]


def test_ct_images_with_too_few_slices_stay_a_plain_not_a_volume() -> None:
    with pytest.raises(NotAVolumeError) as info:
        load_series(S.axial_ct(shape=(1, 12, 16)).datasets)
    assert type(info.value) is NotAVolumeError


# ---------------------------------------------------------------------------------------
# Siemens mosaic

def _csa2(tags: dict[str, tuple[str, list[str]]]) -> bytes:
    """A Siemens CSA2 ("SV10") header with ``name → (vr, values)``, as nibabel reads it."""
    out = [b"SV10", b"\x04\x03\x02\x01", struct.pack("<2I", len(tags), 77)]
    for name, (vr, values) in tags.items():
        out.append(struct.pack("<64si4s3i", name.encode(), len(values), vr.encode(), 0,
                               len(values), 77))
        for text in values:
            data = text.encode() + b"\0"
            out.append(struct.pack("<4i", len(data), len(data), 77, len(data)))
            out.append(data + b"\0" * (-len(data) % 4))
    return b"".join(out)


def mosaic(slices: int = 35, tile: int = 64, instances: int = 1, csa: bool = True
           ) -> list[Dataset]:
    """EPI as Siemens stores it: each instance one MR Image Storage frame holding ``slices``
    tiles of ``tile``×``tile`` (⌈√slices⌉ per side, 384×384 for 35 of 64×64), ImageType
    …\\MOSAIC, the CSA image header (0029,1010) with NumberOfImagesInMosaic and the slice
    normal; several instances are time points at the same position."""
    per_side = int(np.ceil(np.sqrt(slices)))
    size = per_side * tile
    base = S.single_frame_series(name="mosaic", shape=(1, size, size), modality="MR",
                                 spacing=(3.0, 3.0, 3.0), origin=(-576.0, -576.0, -50.0))
    out = []
    for t in range(instances):
        ds = copy.deepcopy(base.datasets[0])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
            entropy_srcs=["mosaic", str(slices), str(t)])
        ds.InstanceNumber = ds.AcquisitionNumber = t + 1
        ds.Manufacturer = "SIEMENS"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        ds.SpacingBetweenSlices = 3.0
        if csa:
            block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
            block.add_new(0x10, "OB", _csa2({
                "NumberOfImagesInMosaic": ("US", [str(slices)]),
                "AcquisitionMatrixText": ("SH", [f"{tile}p*{tile}"]),
                "SliceNormalVector": ("FD", ["0.0", "0.0", "1.0"]),
            }))
        out.append(ds)
    return out


@pytest.mark.filterwarnings("ignore:The DICOM readers are highly experimental")
def test_synthetic_csa_header_reads_back() -> None:
    from nibabel.nicom import csareader

    header = csareader.get_csa_header(mosaic()[0], "image")
    assert csareader.get_n_mosaic(header) == 35
    assert csareader.is_mosaic(header)


@pytest.mark.parametrize("instances", [1, 3])
def test_mosaic_is_refused_with_its_own_error(instances: int) -> None:
    with pytest.raises(UnsupportedMosaicError) as info:
        load_series(mosaic(instances=instances))
    error = info.value
    assert isinstance(error, NotAVolumeError)
    assert error.kind == "unsupported-mosaic"
    assert error.images_in_mosaic == 35
    assert "MOSAIC" in str(error) and "NumberOfImagesInMosaic" in str(error)
    assert "35 slices of 64×64" in str(error) and "384×384" in str(error)
    assert len(error.excluded) == instances


def test_mosaic_from_files(tmp_path: Path) -> None:
    datasets = mosaic(instances=2)
    paths = S.write_series(S.Synthetic("mosaic", datasets, None), tmp_path)
    assert pydicom.dcmread(paths[0]).get((0x0029, 0x1010)) is not None
    with pytest.raises(UnsupportedMosaicError) as info:
        load_series(paths)
    assert info.value.images_in_mosaic == 35


def test_mosaic_without_csa_header_is_still_refused() -> None:
    """Anonymisers often strip private tags; ImageType MOSAIC alone decides."""
    with pytest.raises(UnsupportedMosaicError) as info:
        load_series(mosaic(csa=False))
    assert info.value.images_in_mosaic is None
    assert "ImageType" in str(info.value)
