"""Check a received data set's encoding and read the few attributes the index needs.

The data set is stored exactly as sent, so nothing here decodes pixel data or re-encodes
anything. :func:`inspect_dataset` walks the element structure once (every length must fit its
container, every undefined-length sequence and item must be closed, native Pixel Data must be
as long as Rows × Columns × Samples × Bits × Frames say) and then lets pydicom decode only the
identifying top-level attributes. A data set that fails raises :class:`CorruptDataset`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
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

#: Top-level attributes copied into the index (General Study/Series/Image, SOP Common).
WANTED_TAGS = frozenset({
    0x00080005,  # Specific Character Set (decodes the text below)
    0x00080016, 0x00080018, 0x00080020, 0x00080030, 0x00080050, 0x00080060, 0x00081030,
    0x0008103E, 0x00100010, 0x00100020, 0x0020000D, 0x0020000E, 0x00200010, 0x00200011,
    0x00200013, 0x00200052, 0x00080021, 0x00080031, 0x00280002, 0x00280008, 0x00280010,
    0x00280011, 0x00280100,
})


@dataclass(frozen=True)
class DatasetSummary:
    """The identifying attributes of a received instance (empty when absent)."""

    attributes: Dataset
    pixel_data_length: int | None
    pixel_data_encapsulated: bool
    #: True when the instance carries pixels (an image); SR, PR, KO and the like do not.
    has_pixels: bool

    def text(self, keyword: str) -> str:
        """The attribute's value as text, '' when absent or empty."""
        value = self.attributes.get(keyword)
        return "" if value is None else str(value).strip()


class _Walker:
    """One pass over the encoded elements of a data set (no values decoded)."""

    def __init__(self, buffer: bytes, implicit: bool, little: bool):
        self.buffer = buffer
        self.implicit = implicit
        self.order = "<" if little else ">"
        self.wanted: list[bytes] = []
        self.pixel_length: int | None = None
        self.encapsulated = False
        self.has_pixels = False

    def _u32(self, pos: int) -> int:
        return int(struct.unpack_from(self.order + "I", self.buffer, pos)[0])

    def _tag(self, pos: int) -> int:
        group, element = struct.unpack_from(self.order + "HH", self.buffer, pos)
        return int((group << 16) | element)

    def dataset(self, pos: int, end: int, implicit: bool, top: bool) -> tuple[int, bool]:
        """Walk elements from ``pos`` to ``end`` or to an Item Delimitation Item.

        Returns the position after the last element and whether a delimiter ended the walk.
        """
        while pos < end:
            if end - pos < 8:
                raise CorruptDataset(RejectKind.TRUNCATED, f"data set ends inside an element "
                                     f"header at byte {pos}")
            tag = self._tag(pos)
            if tag == _ITEM_END:
                if top:
                    raise CorruptDataset(RejectKind.MALFORMED,
                                         f"stray Item Delimitation Item at byte {pos}")
                return pos + 8, True
            start = pos
            if implicit or tag >> 16 == 0xFFFE:
                vr, length, pos = b"", self._u32(pos + 4), pos + 8
            else:
                vr = self.buffer[pos + 4:pos + 6]
                if vr in _LONG_VRS:
                    if end - pos < 12:
                        raise CorruptDataset(RejectKind.TRUNCATED,
                                             f"data set ends inside element {tag:08X}")
                    length, pos = self._u32(pos + 8), pos + 12
                else:
                    length = int(struct.unpack_from(self.order + "H", self.buffer, pos + 6)[0])
                    pos += 8
            if top and tag in _ANY_PIXEL_DATA:
                self.has_pixels = True
            if length == _UNDEFINED:
                if tag == _PIXEL_DATA and top:
                    self.encapsulated = True
                    pos = self._fragments(pos, end)
                else:
                    # SQ, or UN holding an implicit VR little endian sequence (PS3.5 6.2.2).
                    pos = self._sequence(pos, end, implicit or vr == b"UN")
                continue
            if pos + length > end:
                raise CorruptDataset(RejectKind.TRUNCATED,
                                     f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) says "
                                     f"{length} bytes but only {end - pos} remain")
            if top:
                if tag in WANTED_TAGS:
                    self.wanted.append(self.buffer[start:pos + length])
                elif tag == _PIXEL_DATA:
                    self.pixel_length = length
            pos += length
        if pos > end:
            raise CorruptDataset(RejectKind.TRUNCATED, "an element runs past its container")
        return pos, False

    def _sequence(self, pos: int, end: int, implicit: bool) -> int:
        while True:
            if end - pos < 8:
                raise CorruptDataset(RejectKind.TRUNCATED,
                                     "a sequence is not closed (Sequence Delimitation missing)")
            tag, length = self._tag(pos), self._u32(pos + 4)
            pos += 8
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise CorruptDataset(RejectKind.MALFORMED,
                                     f"expected a sequence item at byte {pos - 8}, found "
                                     f"{tag:08X}")
            if length == _UNDEFINED:
                pos, closed = self.dataset(pos, end, implicit, False)
                if not closed:
                    raise CorruptDataset(RejectKind.TRUNCATED, "a sequence item is not closed")
            else:
                if pos + length > end:
                    raise CorruptDataset(RejectKind.TRUNCATED, "a sequence item is cut short")
                self.dataset(pos, pos + length, implicit, False)
                pos += length

    def _fragments(self, pos: int, end: int) -> int:
        total = 0
        while True:
            if end - pos < 8:
                raise CorruptDataset(RejectKind.TRUNCATED,
                                     "encapsulated Pixel Data is cut short (no Sequence "
                                     "Delimitation)")
            tag, length = self._tag(pos), self._u32(pos + 4)
            pos += 8
            if tag == _SEQUENCE_END:
                self.pixel_length = total
                return pos
            if tag != _ITEM or length == _UNDEFINED or pos + length > end:
                raise CorruptDataset(RejectKind.TRUNCATED,
                                     "an encapsulated Pixel Data fragment is cut short")
            total += length
            pos += length


def inspect_dataset(encoded: bytes, transfer_syntax_uid: str) -> DatasetSummary:
    """Validate the structure of an encoded data set and read its identifying attributes.

    ``encoded`` is the C-STORE Data Set as sent (deflated for Deflated Explicit VR Little
    Endian); ``transfer_syntax_uid`` is the accepted presentation context's.
    """
    syntax = UID(transfer_syntax_uid)
    if syntax.is_deflated:
        try:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            encoded = inflater.decompress(encoded) + inflater.flush()
        except zlib.error as exc:
            raise CorruptDataset(RejectKind.MALFORMED,
                                 f"deflated data set cannot be inflated: {exc}") from None
    implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    if not encoded:
        raise CorruptDataset(RejectKind.MALFORMED, "the data set is empty")
    walker = _Walker(encoded, implicit, little)
    try:
        walker.dataset(0, len(encoded), implicit, True)
    except struct.error as exc:
        raise CorruptDataset(RejectKind.TRUNCATED, f"data set ends early: {exc}") from None
    try:
        attributes = read_dataset(BytesIO(b"".join(walker.wanted)), implicit, little)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad values
        raise CorruptDataset(RejectKind.MALFORMED,
                             f"identifying attributes cannot be read: {exc}") from None
    summary = DatasetSummary(attributes, walker.pixel_length, walker.encapsulated,
                             walker.has_pixels)
    _check_native_pixel_length(summary)
    return summary


def _check_native_pixel_length(summary: DatasetSummary) -> None:
    """Native (uncompressed) Pixel Data must hold every frame the image header announces."""
    ds = summary.attributes
    if summary.pixel_data_length is None or summary.pixel_data_encapsulated:
        return
    try:
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.get("BitsAllocated") or 0)
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        raise CorruptDataset(RejectKind.MALFORMED,
                             "image pixel module attributes are not numbers") from None
    expected = (rows * columns * samples * frames * bits + 7) // 8
    if summary.pixel_data_length < expected:
        raise CorruptDataset(RejectKind.TRUNCATED,
                             f"Pixel Data holds {summary.pixel_data_length} bytes but "
                             f"{rows}x{columns}x{samples} samples of {bits} bits x {frames} "
                             f"frame(s) need {expected}")
