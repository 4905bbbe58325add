"""Check a received data set completely before it is acknowledged, and summarise it.

The data set is stored exactly as sent, so nothing here re-encodes anything. :func:`inspect_dataset`

1. inflates a Deflated Explicit VR data set within ``max_size`` (counted first without keeping
   the output, so an inflation bomb costs no memory);
2. walks every element once, at every depth (:class:`_Walker`): lengths must fit their container,
   explicit VRs must be DICOM VRs and value lengths must suit them, items and delimiters must sit
   where PS3.5 7.5 puts them, tags must ascend, Pixel Data must be encapsulated exactly when the
   transfer syntax says so, and no File Meta Information may hide in the data set;
3. lets pydicom read the header (everything but the top-level Pixel Data) and decode every
   value that can still fail after step 2 (see ``_REPARSED_VRS``), so a value no reader can
   decode is refused here and not found by a job later;
4. checks the identity (SOP Instance/Class UID against the C-STORE command, UIDs per PS3.5 9.1)
   and that native Pixel Data is exactly as long as the Image Pixel module says.

A data set that fails raises :class:`CorruptDataset` with its typed :class:`RejectKind`.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Literal

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID

from dicomnode.receiver.errors import CorruptDataset, RejectKind

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
#: Pixel Data, Float Pixel Data, Double Float Pixel Data: an instance with one is an image.
_ANY_PIXEL_DATA = frozenset({_PIXEL_DATA, 0x7FE00008, 0x7FE00009})
_UNDEFINED = 0xFFFFFFFF
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS",
                        b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL",
                        b"US"})
#: Bytes per value of the binary VRs: a value length must be a multiple of it.
_VALUE_SIZE = {"AT": 4, "FL": 4, "FD": 8, "SL": 4, "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8,
               "OD": 8, "OF": 4, "OL": 4, "OV": 8, "OW": 2, "US or SS": 2, "US or OW": 2}
#: Deeper nesting than this is refused: no IOD comes close, and a reader recursing without
#: bound is how a hostile sender would crash the next tool that opens the file.
MAX_DEPTH = 32
#: Inflation is done in steps of this size (bounds the memory of one step).
_INFLATE_STEP = 1024 * 1024

_STRICT_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_LENIENT_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

UidPolicy = Literal["strict", "lenient"]


@dataclass(frozen=True)
class Command:
    """What the C-STORE request says the data set is (its Affected SOP UIDs)."""

    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class DatasetSummary:
    """A validated instance: its header (everything but the top-level Pixel Data), decoded."""

    attributes: Dataset
    pixel_data_length: int | None
    pixel_data_encapsulated: bool
    #: True when the instance carries pixels (an image); SR, PR, KO and the like do not.
    has_pixels: bool
    #: SHA-256 of the top-level pixel data bytes as sent ('' without pixel data).
    pixel_sha256: str
    #: UIDs accepted only under ``node.uid_validation: lenient`` (leading zeros), for the log.
    lenient_uids: tuple[str, ...] = ()

    def text(self, keyword: str) -> str:
        """The attribute's value as text, '' when absent or empty."""
        value = self.attributes.get(keyword)
        return "" if value is None else str(value).strip()

    def content_digest(self, transfer_syntax_uid: str) -> str:
        """What makes two instances under one SOP Instance UID the same object: SOP class,
        study, series, transfer syntax and pixel bytes (the README's definition of a
        duplicate)."""
        parts = (self.text("SOPClassUID"), self.text("StudyInstanceUID"),
                 self.text("SeriesInstanceUID"), transfer_syntax_uid, self.pixel_sha256)
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Walker:
    """One pass over the encoded elements of a data set, at every depth (no values decoded)."""

    def __init__(self, buffer: bytes, little: bool, encapsulated_syntax: bool):
        self.buffer = buffer
        order = "<" if little else ">"
        # Compiled once: a format string per call cost a tenth of the walk.
        self._uint16 = struct.Struct(order + "H").unpack_from
        self._uint32 = struct.Struct(order + "I").unpack_from
        self._group_element = struct.Struct(order + "HH").unpack_from
        self.encapsulated_syntax = encapsulated_syntax
        #: Byte span of the top-level Pixel Data element (header included), if any.
        self.pixel_span: tuple[int, int] | None = None
        self.pixel_value: tuple[int, int] | None = None
        self.pixel_length: int | None = None
        self.encapsulated = False
        self.has_pixels = False
        #: Whether an explicit VR element anywhere is UN (its value is converted on access).
        self.has_un = False

    def _u32(self, pos: int) -> int:
        return int(self._uint32(self.buffer, pos)[0])

    def _tag(self, pos: int) -> int:
        group, element = self._group_element(self.buffer, pos)
        return int((group << 16) | element)

    def dataset(self, pos: int, end: int, implicit: bool, depth: int,
                in_undefined_item: bool) -> int:
        """Walk the elements from ``pos`` to ``end``; in an undefined-length item, up to and
        including its Item Delimitation Item. Returns the position after the last element."""
        if depth > MAX_DEPTH:
            raise CorruptDataset(RejectKind.MALFORMED,
                                 f"sequences nested deeper than {MAX_DEPTH} levels")
        top = depth == 0
        previous = -1
        while pos < end:
            if end - pos < 8:
                raise CorruptDataset(RejectKind.TRUNCATED, f"data set ends inside an element "
                                     f"header at byte {pos}")
            tag = self._tag(pos)
            if tag == _ITEM_END:
                if not in_undefined_item or self._u32(pos + 4) != 0:
                    raise CorruptDataset(RejectKind.MALFORMED,
                                         f"stray Item Delimitation Item at byte {pos}")
                return pos + 8
            if tag >> 16 == 0xFFFE:
                raise CorruptDataset(RejectKind.MALFORMED,
                                     f"{_name(tag)} (an item or delimiter tag) at byte {pos} "
                                     "where a data element must be")
            if tag <= previous:
                raise CorruptDataset(RejectKind.MALFORMED,
                                     f"element {_name(tag)} at byte {pos} "
                                     f"{'repeats' if tag == previous else 'is out of order'} "
                                     f"(after {_name(previous)})")
            previous = tag
            if tag >> 16 == 0x0002:
                raise CorruptDataset(RejectKind.PART10_IN_DATASET,
                                     f"File Meta Information element {_name(tag)} inside the "
                                     "data set (a Part-10 file sent as a data set?)")
            start = pos
            if implicit:
                vr, length, pos = _implicit_vr(tag), self._u32(pos + 4), pos + 8
            else:
                code = self.buffer[pos + 4:pos + 6]
                if code in _LONG_VRS:
                    if end - pos < 12:
                        raise CorruptDataset(RejectKind.TRUNCATED,
                                             f"data set ends inside element {_name(tag)}")
                    if self.buffer[pos + 6:pos + 8] != b"\x00\x00":
                        raise CorruptDataset(RejectKind.INVALID_VR,
                                             f"element {_name(tag)}: reserved bytes after VR "
                                             f"{code.decode()} are not zero")
                    length, pos = self._u32(pos + 8), pos + 12
                elif code in _SHORT_VRS:
                    length = int(self._uint16(self.buffer, pos + 6)[0])
                    pos += 8
                else:
                    raise CorruptDataset(RejectKind.INVALID_VR,
                                         f"element {_name(tag)} has VR bytes {code!r}, not a "
                                         "DICOM VR")
                vr = code.decode()
                if vr == "UN":
                    self.has_un = True
            if top and tag in _ANY_PIXEL_DATA:
                self.has_pixels = True
            if length == _UNDEFINED:
                pos = self._undefined(tag, vr, pos, end, implicit, depth, top)
            else:
                if pos + length > end:
                    raise CorruptDataset(RejectKind.TRUNCATED,
                                         f"element {_name(tag)} says {length} bytes but only "
                                         f"{end - pos} remain")
                self._defined(tag, vr, pos, length, implicit, depth)
                if top and tag == _PIXEL_DATA:
                    if self.encapsulated_syntax:
                        raise CorruptDataset(RejectKind.MALFORMED,
                                             "native Pixel Data in an encapsulated (compressed) "
                                             "transfer syntax")
                    self.pixel_length = length
                    self.pixel_value = (pos, pos + length)
                pos += length
            if top and tag == _PIXEL_DATA:
                self.pixel_span = (start, pos)
        if in_undefined_item:
            raise CorruptDataset(RejectKind.TRUNCATED, "a sequence item is not closed")
        return pos

    def _defined(self, tag: int, vr: str, pos: int, length: int, implicit: bool,
                 depth: int) -> None:
        size = _VALUE_SIZE.get(vr)
        if size is not None and length % size:
            raise CorruptDataset(RejectKind.INVALID_LENGTH,
                                 f"element {_name(tag)} ({vr}) has {length} bytes, not a "
                                 f"multiple of {size}")
        if vr == "SQ":
            self._items(pos, pos + length, implicit, depth, defined=True)

    def _undefined(self, tag: int, vr: str, pos: int, end: int, implicit: bool, depth: int,
                   top: bool) -> int:
        if tag == _PIXEL_DATA and vr in ("OB", "OW", "OB or OW", ""):
            if top:
                if not self.encapsulated_syntax:
                    raise CorruptDataset(RejectKind.MALFORMED,
                                         "encapsulated Pixel Data in a native transfer syntax")
                self.encapsulated = True
            return self._fragments(pos, end, top)
        if vr not in ("SQ", "UN", "") and not implicit:
            raise CorruptDataset(RejectKind.INVALID_LENGTH,
                                 f"element {_name(tag)} ({vr}) has an undefined length, which "
                                 "only SQ, UN and encapsulated Pixel Data may have")
        # SQ, or UN holding an implicit VR little endian sequence (PS3.5 6.2.2).
        return self._items(pos, end, implicit or vr == "UN", depth, defined=False)

    def _items(self, pos: int, end: int, implicit: bool, depth: int, defined: bool) -> int:
        """Walk a sequence's items; a defined-length sequence ends at ``end``, an undefined
        one at its Sequence Delimitation Item."""
        while True:
            if defined and pos == end:
                return pos
            if end - pos < 8:
                raise CorruptDataset(RejectKind.TRUNCATED,
                                     "a sequence is cut short" if defined else
                                     "a sequence is not closed (Sequence Delimitation missing)")
            tag, length = self._tag(pos), self._u32(pos + 4)
            pos += 8
            if tag == _SEQUENCE_END and not defined:
                if length != 0:
                    raise CorruptDataset(RejectKind.MALFORMED,
                                         "Sequence Delimitation Item with a non-zero length")
                return pos
            if tag != _ITEM:
                raise CorruptDataset(RejectKind.MALFORMED,
                                     f"expected a sequence item at byte {pos - 8}, found "
                                     f"{_name(tag)}")
            if length == _UNDEFINED:
                pos = self.dataset(pos, end, implicit, depth + 1, True)
            else:
                if pos + length > end:
                    raise CorruptDataset(RejectKind.TRUNCATED, "a sequence item is cut short")
                self.dataset(pos, pos + length, implicit, depth + 1, False)
                pos += length

    def _fragments(self, pos: int, end: int, top: bool) -> int:
        total, value_start = 0, pos
        while True:
            if end - pos < 8:
                raise CorruptDataset(RejectKind.TRUNCATED,
                                     "encapsulated Pixel Data is cut short (no Sequence "
                                     "Delimitation)")
            tag, length = self._tag(pos), self._u32(pos + 4)
            pos += 8
            if tag == _SEQUENCE_END:
                if top:
                    self.pixel_length = total
                    self.pixel_value = (value_start, pos)
                return pos
            if tag != _ITEM or length == _UNDEFINED or pos + length > end:
                raise CorruptDataset(RejectKind.TRUNCATED,
                                     "an encapsulated Pixel Data fragment is cut short")
            total += length
            pos += length


def _implicit_vr(tag: int) -> str:
    """The dictionary VR of a tag in an implicit VR data set ('' when unknown, e.g. private)."""
    if tag & 0xFFFF == 0:
        return "UL"  # group length
    try:
        return str(dictionary_VR(Tag(tag)))
    except KeyError:
        return ""


def inflated_size(deflated: bytes, limit: int) -> int:
    """Size of a raw deflate stream once inflated, counted without keeping the output; raises
    ``TOO_LARGE`` past ``limit`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, pending = 0, deflated
    try:
        while pending:
            total += len(inflater.decompress(pending, _INFLATE_STEP))
            pending = inflater.unconsumed_tail
            if total > limit:
                raise CorruptDataset(RejectKind.TOO_LARGE,
                                     f"the deflated data set inflates to more than {limit} "
                                     "bytes (storage.max_instance_size)")
            if inflater.eof:
                break
        total += len(inflater.flush())
        if not inflater.eof:
            raise CorruptDataset(RejectKind.TRUNCATED,
                                 "the deflated data set is cut short (its deflate stream does "
                                 "not end)")
    except zlib.error as exc:
        raise CorruptDataset(RejectKind.MALFORMED,
                             f"deflated data set cannot be inflated: {exc}") from None
    if total > limit:
        raise CorruptDataset(RejectKind.TOO_LARGE, f"the deflated data set inflates to {total} "
                             f"bytes, more than storage.max_instance_size ({limit})")
    return total


def check_uid(value: str, what: str, policy: UidPolicy) -> bool:
    """Raise ``INVALID_UID`` unless ``value`` is one UID; True when only leniency let it
    pass."""
    if len(value) <= 64 and _STRICT_UID.match(value):
        return False
    if policy == "lenient" and len(value) <= 64 and _LENIENT_UID.match(value):
        return True
    raise CorruptDataset(RejectKind.INVALID_UID,
                         f"{what} {value[:80]!r} is not a valid UID (digits and dots, at most 64 "
                         "characters, no leading zeros in a component: PS3.5 9.1)")


def inspect_dataset(encoded: bytes, transfer_syntax_uid: str, command: Command | None = None, *,
                    max_size: int = 2**62, uid_policy: UidPolicy = "lenient") -> DatasetSummary:
    """Validate an encoded data set completely and summarise it.

    ``encoded`` is the C-STORE Data Set as sent (deflated for Deflated Explicit VR Little
    Endian); ``transfer_syntax_uid`` is the accepted presentation context's. ``command`` (None
    when re-reading the spool) is checked against the data set's own SOP UIDs.
    """
    syntax = UID(transfer_syntax_uid)
    if len(encoded) > max_size:
        raise CorruptDataset(RejectKind.TOO_LARGE, f"the data set has {len(encoded)} bytes, more "
                             f"than storage.max_instance_size ({max_size})")
    if syntax.is_deflated:
        inflated_size(encoded, max_size)
        encoded = zlib.decompress(encoded, -zlib.MAX_WBITS)
    if not encoded:
        raise CorruptDataset(RejectKind.MALFORMED, "the data set is empty")
    if encoded[128:132] == b"DICM":
        raise CorruptDataset(RejectKind.PART10_IN_DATASET,
                             "the data set starts with a Part-10 preamble and 'DICM' (a whole "
                             "file was sent as the data set)")
    implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    walker = _Walker(encoded, little, syntax.is_encapsulated)
    try:
        walker.dataset(0, len(encoded), implicit, 0, False)
    except struct.error as exc:
        raise CorruptDataset(RejectKind.TRUNCATED, f"data set ends early: {exc}") from None
    attributes = _decode_header(encoded, walker.pixel_span, implicit, little,
                                decode_values=implicit or walker.has_un)
    lenient = _check_identity(attributes, command, uid_policy)
    pixel_sha = ""
    if walker.pixel_value is not None:
        start, stop = walker.pixel_value
        pixel_sha = hashlib.sha256(memoryview(encoded)[start:stop]).hexdigest()
    summary = DatasetSummary(attributes, walker.pixel_length, walker.encapsulated,
                             walker.has_pixels, pixel_sha, lenient)
    _check_native_pixel_length(summary)
    return summary


def _decode_header(encoded: bytes, pixel_span: tuple[int, int] | None, implicit: bool,
                   little: bool, decode_values: bool = True) -> Dataset:
    """Every element but the top-level Pixel Data, read by pydicom; with ``decode_values``
    every value that can still fail to decode is decoded (:func:`_decode_all`)."""
    head, tail = (encoded, b"") if pixel_span is None else (encoded[:pixel_span[0]],
                                                            encoded[pixel_span[1]:])
    try:
        header = read_dataset(BytesIO(head), implicit, little)
        if tail:  # rare: elements after Pixel Data (padding, private trailers)
            for element in read_dataset(BytesIO(tail), implicit, little):
                header[element.tag] = element
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad bytes
        raise CorruptDataset(RejectKind.MALFORMED,
                             f"the data set cannot be read: {exc}") from None
    if decode_values:
        _decode_all(header, "", implicit)
    return header


#: Explicit VRs whose values pydicom re-parses on access and can fail to decode once the
#: walker has passed them: a sequence (parsed again into items) and UN (converted to the
#: dictionary VR, whose value size the bytes may not fit). Every other value's conversion
#: cannot raise after the walker's length checks (text decodes with replacement), so it is
#: left lazy: decoding all ~135 elements of a CT header cost 2.7 ms an instance (cProfile:
#: Dataset.__getitem__ → convert_raw_data_element), a third of the receive path.
#: In an explicit VR data set without any UN element, a sequence's re-parse only repeats what
#: the walker checked at every depth (item and delimiter tags, lengths, VRs), so
#: :func:`inspect_dataset` skips it: half the inspection of the example CT's 10 sequences
#: (py-spy, issue 17). tests/service/test_fuzz.py reads back every acknowledged mutant with
#: pydicom, every element decoded.
_REPARSED_VRS = frozenset({"SQ", "UN"})


def _decode_all(ds: Dataset, path: str, implicit: bool) -> None:
    """Decode every value that can still fail to decode (all of them in an implicit VR data
    set, where the VR comes from the dictionary); raise ``MALFORMED`` naming the element."""
    for tag in list(ds.keys()):
        if not implicit:
            raw = ds.get_item(tag)
            if getattr(raw, "VR", "SQ") not in _REPARSED_VRS:
                continue
        try:
            element = ds[tag]
            value = element.value
        except Exception as exc:  # noqa: BLE001 - any conversion failure
            raise CorruptDataset(RejectKind.MALFORMED,
                                 f"element {path}{_name(int(tag))} cannot be decoded: "
                                 f"{exc}") from None
        if element.VR == "SQ":
            for number, item in enumerate(value):
                _decode_all(item, f"{path}{_name(int(tag))}[{number}]/", implicit)


def _uid_text(ds: Dataset, keyword: str, policy: UidPolicy, lenient: list[str]) -> str:
    """A key UID of the data set as text ('' when absent), checked to be one valid UID."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue):  # a backslash inside a UI value
        joined = "\\".join(map(str, value))
        raise CorruptDataset(RejectKind.INVALID_UID,
                             f"{keyword} has {len(value)} values ({joined[:80]!r}): a UID has "
                             "one")
    text = str(value).strip()
    if text and check_uid(text, keyword, policy):
        lenient.append(text)
    return text


def _check_identity(ds: Dataset, command: Command | None, policy: UidPolicy
                    ) -> tuple[str, ...]:
    """Every key UID is a valid UID; the data set's SOP UIDs agree with the command's."""
    lenient: list[str] = []
    sop_uid = _uid_text(ds, "SOPInstanceUID", policy, lenient)
    sop_class = _uid_text(ds, "SOPClassUID", policy, lenient)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        _uid_text(ds, keyword, policy, lenient)
    if not sop_uid and "DirectoryRecordSequence" in ds:
        raise CorruptDataset(RejectKind.MEDIA_DIRECTORY,
                             "a DICOMDIR (Directory Record Sequence, no SOP Instance UID of its "
                             "own) sent as an instance: it indexes files, it is not an image")
    if not sop_uid:
        raise CorruptDataset(RejectKind.MISSING_UID,
                             "the data set has no SOP Instance UID (0008,0018)")
    if command is not None:
        if sop_uid != command.sop_instance_uid:
            raise CorruptDataset(RejectKind.UID_MISMATCH,
                                 f"the data set's SOP Instance UID {sop_uid[:80]!r} differs from "
                                 "the command's Affected SOP Instance UID "
                                 f"{command.sop_instance_uid!r}")
        # An empty (0008,0016) is tolerated (real archives send them): the command's is used.
        if sop_class and sop_class != command.sop_class_uid:
            raise CorruptDataset(RejectKind.SOP_CLASS_MISMATCH,
                                 f"the data set's SOP Class UID {sop_class[:80]!r} differs from "
                                 "the presentation context's / command's "
                                 f"{command.sop_class_uid!r}")
    return tuple(lenient)


def _check_native_pixel_length(summary: DatasetSummary) -> None:
    """Native (uncompressed) Pixel Data must hold exactly the frames the header announces
    (plus the one pad byte that makes an odd length even)."""
    ds = summary.attributes
    if summary.pixel_data_length is None or summary.pixel_data_encapsulated:
        return
    missing = [k for k in ("Rows", "Columns", "BitsAllocated") if ds.get(k) in (None, "")]
    if missing:
        raise CorruptDataset(RejectKind.PIXEL_DATA,
                             f"native Pixel Data without {', '.join(missing)}: its size cannot "
                             "be checked nor its pixels read")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        raise CorruptDataset(RejectKind.PIXEL_DATA,
                             "Image Pixel module attributes are not numbers") from None
    if min(rows, columns, samples, bits, frames) < 1:
        raise CorruptDataset(RejectKind.PIXEL_DATA,
                             f"Rows {rows}, Columns {columns}, Samples per Pixel {samples}, "
                             f"Bits Allocated {bits}, Number of Frames {frames}: none may be 0")
    expected = (rows * columns * samples * frames * bits + 7) // 8
    length = summary.pixel_data_length
    if length != expected and length != expected + (expected % 2):
        raise CorruptDataset(RejectKind.PIXEL_DATA,
                             f"Pixel Data holds {length} bytes but {rows}x{columns}x{samples} "
                             f"samples of {bits} bits x {frames} frame(s) need {expected}")
