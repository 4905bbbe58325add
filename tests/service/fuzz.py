"""Seeded mutation fuzzing of the C-STORE receiver: good seed data sets, a mutator, checkers.

Seeds are built in code from the shared example CT (nothing binary is committed) and encoded
in their transfer syntax. :func:`make_mutant` derives mutant ``index`` of fuzz seed ``seed``
from its own ``random.Random(f"{seed}:{index}")``, so any single mutant can be rebuilt without
generating the ones before it::

    python -m tests.service.fuzz SEED INDEX out.dcm   # the Part-10 file the test sends

Every mutant carries a fresh SOP Instance UID (file meta, hence the C-STORE command, and the
data set's (0008,0018) before mutating), so command UIDs never collide.

The checkers judge an instance the node answered 0x0000, from its spool file: pydicom must
read it and decode every element (:func:`check_pydicom`), and dcmtk's ``dcmdump`` must report
no error (:func:`check_dcmdump`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from tests.service import hostile

#: dcmtk's dcmdump by absolute path: the venv's pynetdicom-provided tools shadow dcmtk's.
DCMDUMP = "/usr/bin/dcmdump"

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
BASIC_TEXT_SR = UID("1.2.840.10008.5.1.4.1.1.88.11")

#: Every mutant's SOP Instance UID has this length, so the seed's placeholder UID can be
#: overwritten in place (an even length: no padding byte).
UID_LENGTH = 58
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as generate_uid uses

# The encoding's fixed tags and VR classes (PS3.5 7.1.2, 7.5), shared with the bad-input cases.
_ITEM, _ITEM_END, _SEQUENCE_END = hostile.ITEM, hostile.ITEM_END, hostile.SEQUENCE_END
_UNDEFINED, _LONG_VRS = hostile.UNDEFINED, hostile.LONG_VRS
VALID_VRS = (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO",
             b"LT", b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ",
             b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT",
             b"UV")
INVALID_VRS = (b"XX", b"\x00\x00", b"ob", b"Ob", b"  ", b"\xff\xff", b"U\x00", b"QQ")


def mutant_uid(stream: int, seed: int, index: int) -> str:
    """A deterministic SOP Instance UID of exactly :data:`UID_LENGTH` characters."""
    digits = f"1{stream:05d}{seed:010d}{index:016d}"
    uid = _UID_ROOT + digits
    assert len(uid) == UID_LENGTH, uid
    return uid


PLACEHOLDER_UID = mutant_uid(99999, 0, 0)


# --- the element map of a well-formed encoded data set ----------------------------------------

@dataclass(frozen=True)
class Element:
    """One encoded element, item or delimiter of a (well-formed) data set."""

    offset: int  #: start of the tag
    tag: int
    vr: bytes  #: b"" for implicit VR elements, items and delimiters
    length_offset: int
    length_size: int  #: 2 or 4
    length: int  #: as encoded (0xFFFFFFFF: undefined)
    value_offset: int
    end: int  #: past the value, and past the closing delimiter of an undefined length
    depth: int
    kind: str  #: "element", "item", "item-end", "sequence-end", "fragment"

    def describe(self) -> str:
        vr = self.vr.decode("latin-1") if self.vr else "--"
        return (f"{self.kind} ({self.tag >> 16:04X},{self.tag & 0xFFFF:04X}) {vr} at "
                f"{self.offset:#x} depth {self.depth}")


class _SeedWalker:
    """Walks a trusted, well-formed little endian data set and records every element."""

    def __init__(self, data: bytes, implicit: bool):
        self.data = data
        self.implicit = implicit
        self.elements: list[Element] = []

    def _header(self, pos: int) -> tuple[int, int]:
        group, element, length = struct.unpack_from("<HHI", self.data, pos)
        return (group << 16) | element, int(length)

    def dataset(self, pos: int, end: int, implicit: bool, depth: int) -> int:
        while pos < end:
            tag, _ = self._header(pos)
            if tag == _ITEM_END:
                self.elements.append(Element(pos, tag, b"", pos + 4, 4, 0, pos + 8, pos + 8,
                                             depth, "item-end"))
                return pos + 8
            start, index = pos, len(self.elements)
            if implicit:
                vr, length_offset, size, value = b"", pos + 4, 4, pos + 8
            else:
                vr = self.data[pos + 4:pos + 6]
                if vr in _LONG_VRS:
                    length_offset, size, value = pos + 8, 4, pos + 12
                else:
                    length_offset, size, value = pos + 6, 2, pos + 8
            length = int.from_bytes(self.data[length_offset:length_offset + size], "little")
            self.elements.append(Element(start, tag, vr, length_offset, size, length, value,
                                         value, depth, "element"))  # end fixed below
            if length == _UNDEFINED:
                if tag == 0x7FE00010 and depth == 0:
                    pos = self._sequence(value, end, implicit, depth + 1, fragments=True)
                else:
                    pos = self._sequence(value, end, implicit or vr == b"UN", depth + 1)
            elif vr == b"SQ" or (implicit and _is_sequence(tag)):
                self._sequence(value, value + length, implicit, depth + 1)
                pos = value + length
            else:
                pos = value + length
            self.elements[index] = _with_end(self.elements[index], pos)
        return pos

    def _sequence(self, pos: int, end: int, implicit: bool, depth: int,
                  fragments: bool = False) -> int:
        while pos < end:
            tag, length = self._header(pos)
            if tag == _SEQUENCE_END:
                self.elements.append(Element(pos, tag, b"", pos + 4, 4, 0, pos + 8, pos + 8,
                                             depth, "sequence-end"))
                return pos + 8
            assert tag == _ITEM, f"not an item at {pos:#x}"
            index = len(self.elements)
            kind = "fragment" if fragments else "item"
            self.elements.append(Element(pos, tag, b"", pos + 4, 4, length, pos + 8, pos + 8,
                                         depth, kind))
            if fragments:
                item_end = pos + 8 + length
            elif length == _UNDEFINED:
                item_end = self.dataset(pos + 8, end, implicit, depth + 1)
            else:
                self.dataset(pos + 8, pos + 8 + length, implicit, depth + 1)
                item_end = pos + 8 + length
            self.elements[index] = _with_end(self.elements[index], item_end)
            pos = item_end
        return pos


def _with_end(element: Element, end: int) -> Element:
    return Element(element.offset, element.tag, element.vr, element.length_offset,
                   element.length_size, element.length, element.value_offset, end,
                   element.depth, element.kind)


def _is_sequence(tag: int) -> bool:
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


def element_map(data: bytes, implicit: bool = False) -> list[Element]:
    """Every element, item and delimiter of a well-formed little endian data set, in order."""
    walker = _SeedWalker(data, implicit)
    end = walker.dataset(0, len(data), implicit, 0)
    assert end == len(data), f"seed walk ended at {end} of {len(data)}"
    return walker.elements


# --- the mutator ------------------------------------------------------------------------------

#: An edit: replace data[start:end] with the bytes; "what" says what it did, for the report.
@dataclass(frozen=True)
class Edit:
    start: int
    end: int
    replacement: bytes
    what: str


def _pick_element(rng: random.Random, elements: list[Element],
                  accept: Callable[[Element], bool] = lambda e: True) -> Element | None:
    candidates = [e for e in elements if accept(e)]
    if not candidates:
        return None
    # Half the time prefer structure: sequences, items, delimiters, pixel data.
    structural = [e for e in candidates if e.kind != "element" or e.vr in (b"SQ", b"UN")
                  or e.length == _UNDEFINED or e.tag >> 16 == 0x7FE0]
    if structural and rng.random() < 0.5:
        return rng.choice(structural)
    return rng.choice(candidates)


def _header_position(rng: random.Random, data: bytes, elements: list[Element]) -> int:
    """A byte position: in an element header 60% of the time, anywhere otherwise."""
    element = _pick_element(rng, elements) if elements and rng.random() < 0.6 else None
    if element is None:
        return rng.randrange(len(data))
    return min(len(data) - 1, rng.randrange(element.offset, element.value_offset + 2))


def _op_flip(rng: random.Random, data: bytes, elements: list[Element]) -> Edit:
    pos = _header_position(rng, data, elements)
    bit = 1 << rng.randrange(8)
    return Edit(pos, pos + 1, bytes([data[pos] ^ bit]), f"flip bit {bit:#04x} at {pos:#x}")


def _op_overwrite(rng: random.Random, data: bytes, elements: list[Element]) -> Edit:
    pos = _header_position(rng, data, elements)
    count = min(rng.choice((1, 1, 2, 4, 8, 16)), len(data) - pos)
    new = bytes(rng.randrange(256) for _ in range(count))
    return Edit(pos, pos + count, new, f"overwrite {count} byte(s) at {pos:#x} with {new.hex()}")


def _lie(rng: random.Random, element: Element, remaining: int) -> int:
    length, size = element.length, element.length_size
    top = (1 << (8 * size)) - 1
    if length == _UNDEFINED:
        choices = [0, 2, 8, rng.randrange(0, 1 << 16), remaining, remaining + 2,
                   0xFFFFFFFE]
    else:
        choices = [length + 1, length - 1, length + 2, length - 2, length + 8, length * 2,
                   0, top, top - 1, rng.randrange(0, top + 1), remaining, remaining + 1,
                   length + rng.randrange(1, 4096)]
        if size == 4:
            choices.append(_UNDEFINED)
    return max(0, min(top, rng.choice(choices)))


def _op_length(rng: random.Random, data: bytes, elements: list[Element]) -> Edit | None:
    element = _pick_element(rng, elements, lambda e: e.kind != "sequence-end")
    if element is None:
        return None
    new = _lie(rng, element, len(data) - element.value_offset)
    if new == element.length:
        new = element.length + 1 if element.length + 1 < 1 << (8 * element.length_size) else 0
    start = element.length_offset
    return Edit(start, start + element.length_size,
                new.to_bytes(element.length_size, "little"),
                f"length of {element.describe()}: {element.length:#x} -> {new:#x}")


def _op_truncate(rng: random.Random, data: bytes, elements: list[Element]) -> Edit:
    if elements and rng.random() < 0.5:  # near an element boundary
        element = _pick_element(rng, elements)
        assert element is not None
        pos = max(1, min(len(data) - 1, element.offset + rng.randrange(-2, 14)))
    else:
        pos = rng.randrange(1, len(data))
    return Edit(pos, len(data), b"", f"truncate at {pos:#x} (of {len(data):#x})")


def _op_vr(rng: random.Random, data: bytes, elements: list[Element]) -> Edit | None:
    element = _pick_element(rng, elements, lambda e: bool(e.vr))
    if element is None:
        return None
    new = rng.choice(VALID_VRS) if rng.random() < 0.6 else rng.choice(INVALID_VRS)
    if new == element.vr:
        new = b"XX"
    return Edit(element.offset + 4, element.offset + 6, new,
                f"VR of {element.describe()} -> {new!r}")


def _op_stray(rng: random.Random, data: bytes, elements: list[Element]) -> Edit:
    tag = rng.choice((_ITEM, _ITEM, _ITEM_END, _SEQUENCE_END))
    length = 0
    if tag == _ITEM:
        length = rng.choice((0, 0, 8, _UNDEFINED, rng.randrange(0, 256)))
    elif rng.random() < 0.2:
        length = rng.randrange(1, 256)
    header = struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length)
    if elements and rng.random() < 0.85:
        element = rng.choice(elements)
        pos = element.offset if rng.random() < 0.7 else element.end
    else:
        pos = rng.randrange(len(data) + 1)
    pos = min(pos, len(data))
    return Edit(pos, pos, header, f"insert ({tag >> 16:04X},{tag & 0xFFFF:04X}) length "
                                  f"{length:#x} at {pos:#x}")


def _op_duplicate(rng: random.Random, data: bytes, elements: list[Element]) -> Edit | None:
    element = _pick_element(rng, elements, lambda e: e.end - e.offset < 64 * 1024)
    if element is None:
        return None
    return Edit(element.end, element.end, data[element.offset:element.end],
                f"duplicate {element.describe()} ({element.end - element.offset} bytes)")


def _op_delete(rng: random.Random, data: bytes, elements: list[Element]) -> Edit | None:
    element = _pick_element(rng, elements)
    if element is None:
        return None
    return Edit(element.offset, element.end, b"",
                f"delete {element.describe()} ({element.end - element.offset} bytes)")


Operation = Callable[[random.Random, bytes, list[Element]], "Edit | None"]

#: (operation, weight, needs the element map)
OPERATIONS: tuple[tuple[str, Operation, float, bool], ...] = (
    ("flip", _op_flip, 2.0, False),
    ("overwrite", _op_overwrite, 2.0, False),
    ("length", _op_length, 3.0, True),
    ("truncate", _op_truncate, 1.0, False),
    ("vr", _op_vr, 2.0, True),
    ("stray-delimiter", _op_stray, 2.0, False),
    ("duplicate", _op_duplicate, 1.5, True),
    ("delete", _op_delete, 1.5, True),
)


def mutate(data: bytes, rng: random.Random, elements: list[Element] | None = None,
           log: list[str] | None = None) -> bytes:
    """Apply 1-3 random operations to an encoded data set.

    ``elements`` is the map of ``data`` (:func:`element_map`); without it only the operations
    that need no map (flips, overwrites, truncation, stray delimiters at random positions)
    are used. Every operation is chosen on the unmutated data and the edits are applied from
    the last position back, so each lands where it was aimed. What was done is appended to
    ``log``.
    """
    elements = elements or []
    usable = [op for op in OPERATIONS if elements or not op[3]]
    count = rng.choices((1, 2, 3), weights=(5, 3, 2))[0]
    edits: list[Edit] = []
    while len(edits) < count:
        _, operation, _, _ = rng.choices(usable, weights=[op[2] for op in usable])[0]
        edit = operation(rng, data, elements)
        if edit is not None:
            edits.append(edit)
    result = bytearray(data)
    for edit in sorted(edits, key=lambda e: (e.start, e.end), reverse=True):
        if edit.start > len(result):
            continue  # cut away by a truncation applied before
        result[edit.start:edit.end] = edit.replacement
        if log is not None:
            log.append(edit.what)
    if not result:
        result = bytearray(data[:1])
    return bytes(result)


# --- seeds ------------------------------------------------------------------------------------

@dataclass
class Seed:
    """A good data set, encoded (inflated, for a deflated syntax) with the placeholder UID."""

    name: str
    sop_class_uid: str
    transfer_syntax_uid: str
    data: bytes
    elements: list[Element] = field(default_factory=list)
    uid_offset: int = -1

    def __post_init__(self) -> None:
        syntax = UID(self.transfer_syntax_uid)
        self.elements = element_map(self.data, syntax.is_implicit_VR)
        uid_element = next(e for e in self.elements
                           if e.tag == 0x00080018 and e.depth == 0)
        assert uid_element.length == UID_LENGTH
        self.uid_offset = uid_element.value_offset
        assert self.data[self.uid_offset:self.uid_offset + UID_LENGTH] == \
            PLACEHOLDER_UID.encode()

    @property
    def deflated(self) -> bool:
        return UID(self.transfer_syntax_uid).is_deflated

    def with_uid(self, uid: str) -> bytes:
        assert len(uid) == UID_LENGTH
        data = bytearray(self.data)
        data[self.uid_offset:self.uid_offset + UID_LENGTH] = uid.encode()
        return bytes(data)

    def encoded(self, uid: str) -> bytes:
        """The seed as sent, unmutated, under ``uid``."""
        data = self.with_uid(uid)
        return deflate(data) if self.deflated else data


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _encode(ds: Dataset, syntax: str) -> bytes:
    buffer = DicomBytesIO()
    uid = UID(syntax)
    buffer.is_little_endian = True
    buffer.is_implicit_VR = uid.is_implicit_VR
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _fixed_uid(*parts: str) -> str:
    return str(generate_uid(entropy_srcs=["dicomnode-fuzz", *parts]))


def _identify(ds: Dataset, name: str, sop_class: str, modality: str) -> None:
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = PLACEHOLDER_UID
    ds.StudyInstanceUID = _fixed_uid("study")
    ds.SeriesInstanceUID = _fixed_uid("series", name)
    ds.Modality = modality
    ds.PatientID, ds.PatientName = "FUZZ-0001", "Fuzz^Seed"
    ds.SeriesNumber, ds.InstanceNumber = 77, 1


def _native_ct(source: Dataset) -> Dataset:
    """A 64x64 native CT (16 bits allocated) from one example slice's decoded pixels."""
    ds = copy.deepcopy(source)
    pixels = ds.pixel_array
    step = max(1, int(ds.Rows) // 64)
    small = pixels[::step, ::step][:64, :64].copy()
    del ds.PixelData
    ds.remove_private_tags()
    ds.Rows, ds.Columns = small.shape
    ds.BitsAllocated, ds.SamplesPerPixel = 16, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if "PixelSpacing" in ds:
        ds.PixelSpacing = [float(v) * step for v in ds.PixelSpacing]
    for keyword in ("LossyImageCompression", "LossyImageCompressionRatio",
                    "LossyImageCompressionMethod"):
        if keyword in ds:
            delattr(ds, keyword)
    dtype = "<i2" if int(ds.PixelRepresentation) else "<u2"
    ds.PixelData = small.astype(dtype).tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def _code(value: str, meaning: str, undefined: bool = False) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    item.is_undefined_length_sequence_item = undefined
    return item


def _sequence(ds: Dataset, keyword: str, items: list[Dataset], undefined: bool) -> None:
    setattr(ds, keyword, Sequence(items))
    ds[keyword].is_undefined_length = undefined


def _nested_sr() -> Dataset:
    """A Basic Text SR with sequences nested three deep, of defined and undefined length."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    _identify(ds, "sr", BASIC_TEXT_SR, "SR")
    ds.StudyDate, ds.StudyTime = "20260101", "120000"
    ds.ContentDate, ds.ContentTime = "20260101", "120500"
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "1"
    ds.Manufacturer = "dicomnode fuzz"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    _sequence(ds, "ConceptNameCodeSequence", [_code("121144", "Document Title", True)], False)

    text = Dataset()
    text.RelationshipType, text.ValueType = "CONTAINS", "TEXT"
    _sequence(text, "ConceptNameCodeSequence", [_code("121106", "Comment")], True)
    text.TextValue = "Seed for the receiver's mutation fuzz test."
    text.is_undefined_length_sequence_item = False

    leaves = []
    for i, undefined in enumerate((True, False, True)):
        leaf = Dataset()
        leaf.RelationshipType, leaf.ValueType = "CONTAINS", "TEXT"
        _sequence(leaf, "ConceptNameCodeSequence",
                  [_code("121071", "Finding", undefined=not undefined)], undefined)
        leaf.TextValue = f"finding {i + 1}"
        leaf.is_undefined_length_sequence_item = undefined
        leaves.append(leaf)
    container = Dataset()
    container.RelationshipType, container.ValueType = "CONTAINS", "CONTAINER"
    container.ContinuityOfContent = "SEPARATE"
    _sequence(container, "ConceptNameCodeSequence", [_code("121070", "Findings")], False)
    _sequence(container, "ContentSequence", leaves, False)
    container.is_undefined_length_sequence_item = True
    _sequence(ds, "ContentSequence", [text, container], True)

    sop = Dataset()
    sop.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    sop.ReferencedSOPInstanceUID = _fixed_uid("referenced-ct")
    sop.is_undefined_length_sequence_item = True
    series = Dataset()
    series.SeriesInstanceUID = _fixed_uid("series", "referenced")
    _sequence(series, "ReferencedSOPSequence", [sop], False)
    evidence = Dataset()
    evidence.StudyInstanceUID = _fixed_uid("study")
    _sequence(evidence, "ReferencedSeriesSequence", [series], True)
    _sequence(ds, "CurrentRequestedProcedureEvidenceSequence", [evidence], False)
    _sequence(ds, "ReferencedPerformedProcedureStepSequence", [], True)  # empty, undefined
    _sequence(ds, "PertinentOtherEvidenceSequence", [], False)  # empty, defined
    return ds


def build_seeds(sources: list[Dataset]) -> list[Seed]:
    """The good seeds, from the example CT slices (see :func:`tests.service.conftest.example_ct`).

    a. native Explicit VR Little Endian CT, 64x64, 16 bits allocated;
    b. the same in Implicit VR Little Endian;
    c. an example slice as it is: JPEG 2000 Lossless, encapsulated Pixel Data;
    d. a Basic Text SR with nested sequences and items of defined and undefined length;
    e. Deflated Explicit VR Little Endian: the native CT with a Referenced Image Sequence of
       undefined length.
    """
    native = _native_ct(sources[0])
    _identify(native, "native", CT_IMAGE_STORAGE, "CT")
    seeds = [Seed("ct-native-explicit", CT_IMAGE_STORAGE, ExplicitVRLittleEndian,
                  _encode(native, ExplicitVRLittleEndian)),
             Seed("ct-native-implicit", CT_IMAGE_STORAGE, ImplicitVRLittleEndian,
                  _encode(native, ImplicitVRLittleEndian))]

    j2k = copy.deepcopy(sources[1])
    _identify(j2k, "jpeg2000", CT_IMAGE_STORAGE, "CT")
    seeds.append(Seed("ct-jpeg2000", CT_IMAGE_STORAGE, JPEG2000Lossless,
                      _encode(j2k, ExplicitVRLittleEndian)))

    seeds.append(Seed("sr-nested", BASIC_TEXT_SR, ExplicitVRLittleEndian,
                      _encode(_nested_sr(), ExplicitVRLittleEndian)))

    deflated = _native_ct(sources[2])
    _identify(deflated, "deflated", CT_IMAGE_STORAGE, "CT")
    reference = Dataset()
    reference.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    reference.ReferencedSOPInstanceUID = _fixed_uid("referenced-ct")
    reference.is_undefined_length_sequence_item = True
    _sequence(deflated, "ReferencedImageSequence", [reference], True)
    seeds.append(Seed("ct-native-deflated", CT_IMAGE_STORAGE, DeflatedExplicitVRLittleEndian,
                      _encode(deflated, ExplicitVRLittleEndian)))
    return seeds


# --- mutants ----------------------------------------------------------------------------------

#: How often each seed is picked: the JPEG 2000 seed is large and mostly pixel bytes.
SEED_WEIGHTS = {"ct-native-explicit": 3.0, "ct-native-implicit": 2.0, "ct-jpeg2000": 1.0,
                "sr-nested": 3.0, "ct-native-deflated": 1.5}
MUTANT_STREAM = 1


@dataclass(frozen=True)
class Mutant:
    seed: int  #: the fuzz seed (random.Random stream)
    index: int
    seed_name: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: bytes  #: the data set bytes as sent (deflated for a deflated syntax)
    operations: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"seed {self.seed} mutant {self.index} ({self.seed_name})"

    def describe(self) -> str:
        return f"{self.label}: " + "; ".join(self.operations)


def make_mutant(seeds: list[Seed], seed: int, index: int) -> Mutant:
    """Mutant ``index`` of fuzz seed ``seed``: the same bytes every time."""
    rng = random.Random(f"{seed}:{index}")
    template = rng.choices(seeds, weights=[SEED_WEIGHTS.get(s.name, 1.0) for s in seeds])[0]
    uid = mutant_uid(MUTANT_STREAM, seed, index)
    data = template.with_uid(uid)
    log: list[str] = []
    if template.deflated and rng.random() < 0.15:
        log.append("[in the deflated stream]")
        data = mutate(deflate(data), rng, None, log)
    else:
        data = mutate(data, rng, template.elements, log)
        if template.deflated:
            data = deflate(data)
    return Mutant(seed, index, template.name, template.sop_class_uid, uid,
                  template.transfer_syntax_uid, data, tuple(log))


def part10(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
           data: bytes) -> bytes:
    """A Part-10 file: valid file meta, then ``data`` byte for byte."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = UID(_UID_ROOT + "77.1")
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue() + data


def mutant_file(mutant: Mutant) -> bytes:
    return part10(mutant.sop_class_uid, mutant.sop_instance_uid, mutant.transfer_syntax_uid,
                  mutant.data)


# --- checkers ---------------------------------------------------------------------------------

@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's logger (it logs every invalid value it reads) while checking."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_pydicom(path: Path, sop_instance_uid: str, sop_class_uid: str) -> str | None:
    """pydicom (default settings) reads the file and decodes every element; the data set's SOP
    Instance and Class UID are the ones sent. Returns why not, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            for element in ds.iterall():
                _ = element.value
            found = ds.get("SOPInstanceUID")
            found_class = ds.get("SOPClassUID")
    except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
        return f"pydicom: {type(exc).__name__}: {exc}"[:500]
    if found is None or str(found) != sop_instance_uid:
        return f"pydicom: SOP Instance UID in the data set is {found!r}, sent {sop_instance_uid}"
    if found_class is None or str(found_class) != sop_class_uid:
        return f"pydicom: SOP Class UID in the data set is {found_class!r}, sent {sop_class_uid}"
    return None


def check_dcmdump(path: Path) -> str | None:
    """dcmtk's dcmdump: no line starting with ``E:`` (or ``F:``) and exit status 0."""
    result = subprocess.run([DCMDUMP, str(path)], check=False, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=60)
    lines = result.stdout.decode("latin-1").splitlines()
    errors = [line for line in lines if line.startswith(("E:", "F:"))]
    if errors or result.returncode != 0:
        return f"dcmdump (exit {result.returncode}): " + " | ".join(errors[:3])[:500]
    return None


def check_instance(path: Path, sop_instance_uid: str, sop_class_uid: str) -> list[str]:
    """Every checker's complaint about an accepted instance's spool file (empty: good)."""
    return [reason for reason in (check_pydicom(path, sop_instance_uid, sop_class_uid),
                                  check_dcmdump(path)) if reason]


def main(argv: list[str]) -> int:
    """``python -m tests.service.fuzz SEED INDEX OUT.dcm``: write one mutant's Part-10 file."""
    if len(argv) != 3:
        print(main.__doc__, file=sys.stderr)
        return 2
    from tests.service.conftest import example_ct

    mutant = make_mutant(build_seeds(example_ct()), int(argv[0]), int(argv[1]))
    Path(argv[2]).write_bytes(mutant_file(mutant))
    print(mutant.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
