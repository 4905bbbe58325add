"""Byte order and undecodable transfer syntaxes.

Explicit VR Big Endian (retired, still sent by old scanners and archives) must give the same
volume as the little-endian series; a transfer syntax without an installed decoder must be
refused with a typed error that names it, not with whatever the decoder raised.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, RLELossless

from converters.volume import (
    PixelDataError,
    UnsupportedTransferSyntaxError,
    load_series,
)
from tests import synthetic as S
from tests.volume.test_synthetic_series import assert_round_trip, assert_same_image

BIG_ENDIAN_CASES: dict[str, Callable[[], S.Synthetic]] = {
    "axial_ct": S.axial_ct,  # rescaled: int16 output
    "sagittal_t2_mr": S.sagittal_t2_mr,  # unrescaled: the stored (big-endian) type itself
    "enhanced_mr": S.enhanced_mr,  # one multi-frame buffer
    "axial_ct_8bit": lambda: S.axial_ct(name="axial_ct8", bits_stored=8,
                                        rescale=lambda k: (1.0, -100.0)),
}


def _big_endian(ds: Dataset) -> Dataset:
    """The same instance in Explicit VR Big Endian. pydicom writes OW values as given, so the
    16-bit pixel words are swapped here; 8-bit data stays OB (bytes have no order)."""
    out = copy.deepcopy(ds)
    if int(out.BitsAllocated) == 16:
        out.PixelData = np.frombuffer(out.PixelData, "<u2").astype(">u2").tobytes()
    out.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    return out


def _write(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.mark.parametrize("name", BIG_ENDIAN_CASES)
def test_big_endian_series_equals_little_endian(name: str, tmp_path: Path) -> None:
    syn = BIG_ENDIAN_CASES[name]()
    little = load_series(_write(syn.datasets, tmp_path / "le"))
    paths = _write([_big_endian(ds) for ds in syn.datasets], tmp_path / "be")
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == ExplicitVRBigEndian

    big = load_series(paths)
    assert_same_image(big.image, little.image)  # grid, pixel type and every voxel
    assert_same_image(big.image, syn.expected)
    np.testing.assert_array_equal(big.positions, little.positions)
    assert big.sources == little.sources
    assert big.metadata.transfer_syntax_uids == (ExplicitVRBigEndian,)
    assert_round_trip(big)


def test_big_endian_datasets_in_memory(tmp_path: Path) -> None:
    """Datasets a caller read itself (big-endian pixels still in PixelData) load the same."""
    syn = S.sagittal_t2_mr()
    paths = _write([_big_endian(ds) for ds in syn.datasets], tmp_path)
    datasets = [pydicom.dcmread(p) for p in paths]
    volume = load_series(datasets)
    assert_same_image(volume.image, syn.expected)
    assert all("PixelData" in ds for ds in datasets)  # not ours: left as given


def _relabelled(syntax: str) -> list[Dataset]:
    """RLE-compressed axial_ct whose file meta claims ``syntax``."""
    out = []
    for ds in S.compress(S.axial_ct(), RLELossless).datasets:
        ds = copy.deepcopy(ds)
        ds.file_meta.TransferSyntaxUID = UID(syntax)
        out.append(ds)
    return out


@pytest.mark.parametrize("syntax", [
    "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless: a standard syntax pydicom 3.0 cannot decode
    "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile / Main Level
])
def test_undecodable_transfer_syntax_is_a_typed_error(syntax: str) -> None:
    with pytest.raises(UnsupportedTransferSyntaxError) as info:
        load_series(_relabelled(syntax))
    error = info.value
    assert isinstance(error, PixelDataError)
    assert error.kind == "unsupported-transfer-syntax"
    assert error.transfer_syntax_uid == syntax
    assert syntax in str(error) and "TransferSyntaxUID" in str(error)


def test_private_transfer_syntax_from_files_is_a_typed_error(tmp_path: Path) -> None:
    syntax = "1.2.826.0.1.3680043.8.498.999"  # private: pydicom reads it, nothing decodes it
    paths = []
    for i, ds in enumerate(_relabelled(syntax)):
        path = tmp_path / f"{i:03d}.dcm"
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True,
                         enforce_file_format=True)
        paths.append(path)
    with pytest.raises(UnsupportedTransferSyntaxError) as info:
        load_series(paths)
    assert info.value.transfer_syntax_uid == syntax
    assert syntax in str(info.value)
