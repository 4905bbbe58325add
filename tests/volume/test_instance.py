"""converters.instance: frame count and the one multi-frame rule."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, EnhancedMRImageStorage

from converters.instance import (
    SINGLE_FRAME_IMAGE_SOP_CLASSES,
    frame_count,
    frame_numbers,
    is_multiframe,
)

ROOT = Path(__file__).resolve().parents[2]


def _raw_number_of_frames(ds: Dataset, raw: bytes) -> None:
    """Number of Frames as a file gives it: an unconverted element with these bytes."""
    tag = Tag(0x0028, 0x0008)
    ds[tag] = RawDataElement(tag, "IS", len(raw), raw, 0, False, True)


@pytest.mark.parametrize(("raw", "count"), [
    (None, 1), (b"", 1), (b"3 ", 3), (b"1", 1), (b"0", 1), (b"-2", 1), (b"2.5", 1),
    (b"abc", 1), (b"2\\3", 1), (b"12\0", 12),
])
def test_frame_count(raw: bytes | None, count: int) -> None:
    ds = Dataset()
    if raw is not None:
        _raw_number_of_frames(ds, raw)
    assert frame_count(ds) == count


def test_frame_count_of_converted_values() -> None:
    ds = Dataset()
    ds.NumberOfFrames = 7
    assert frame_count(ds) == 7
    ds.NumberOfFrames = None
    assert frame_count(ds) == 1


def _instance(sop_class: str, **attrs: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    for keyword, val in attrs.items():
        setattr(ds, keyword, val)
    return ds


def test_is_multiframe() -> None:
    shared_only = _instance(EnhancedCTImageStorage, NumberOfFrames=1,
                            SharedFunctionalGroupsSequence=[Dataset()])
    assert is_multiframe(shared_only)
    assert frame_numbers(shared_only) == [1]
    del shared_only.NumberOfFrames  # functional groups alone make it one
    assert is_multiframe(shared_only)
    per_frame = _instance(EnhancedMRImageStorage, NumberOfFrames=3,
                          PerFrameFunctionalGroupsSequence=[Dataset(), Dataset(), Dataset()])
    assert frame_numbers(per_frame) == [1, 2, 3]
    assert is_multiframe(_instance(EnhancedCTImageStorage, NumberOfFrames=2))
    # CT Image has no Multi-frame Module: a stray Number of Frames or functional groups do
    # not make its frame one that is referenced by number
    stray = _instance(CTImageStorage, NumberOfFrames=1, SharedFunctionalGroupsSequence=[Dataset()])
    assert not is_multiframe(stray)
    assert frame_numbers(stray) == [None]
    assert not is_multiframe(_instance(CTImageStorage))
    assert not is_multiframe(Dataset())


def test_sop_class_from_the_file_meta_when_blanked() -> None:
    ds = _instance("", NumberOfFrames=1)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    assert not is_multiframe(ds)
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    assert is_multiframe(ds)


def test_agrees_with_highdicom_for_every_image_sop_class() -> None:
    """highdicom writes the SEG's source references; it decides by the IOD. For every image
    SOP class it knows, an instance carrying Number of Frames (as a multi-frame IOD requires,
    and as a stray element of a single-frame one) gets the same verdict here."""
    try:  # highdicom's own tables (private API, as of 0.28)
        from highdicom._standard_utils import (
            get_iod_module_map,
            get_sop_class_iod_map,
            is_multiframe_image,
        )
    except ImportError:
        pytest.skip("this highdicom keeps its IOD tables elsewhere")
    iods, modules = get_sop_class_iod_map(), get_iod_module_map()
    checked = 0
    for sop_class, iod in iods.items():
        if "image-pixel" not in {m["key"] for m in modules[iod]}:
            continue
        ds = _instance(sop_class, NumberOfFrames=1)
        assert is_multiframe(ds) == is_multiframe_image(ds), sop_class
        assert (sop_class in SINGLE_FRAME_IMAGE_SOP_CLASSES) == (not is_multiframe(ds))
        checked += 1
    assert checked > 50


def test_the_module_stays_light() -> None:
    tree = ast.parse((ROOT / "converters" / "instance.py").read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {"." * node.level + (node.module or "") for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert {name.split(".")[0] for name in imported} <= {"__future__", "pydicom"}, imported
    code = ("import sys, converters.instance; "
            "print(sorted(m for m in ('SimpleITK', 'highdicom', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"
