"""Hostile peers for the receiver tests: data-set byte builders, raw sockets and PDUs.

Data sets are built from small, good, synthetic instances encoded with pydicom and then edited
as bytes (:func:`elements` / :func:`join` split and rebuild the top level of an explicit VR
little endian data set), so each bad input differs from a good one in exactly one way. They are
sent byte for byte by :func:`send_dataset_bytes`: a Part-10 file whose file meta is written by
hand (so even invalid UIDs reach the wire) and whose data set is whatever the test wants, sent
with pynetdicom's chunked C-STORE (it reads only the file meta and copies the rest).
"""

from __future__ import annotations

import contextlib
import copy
import random
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config as pynetdicom_config, association as pynetdicom_association
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset

from tests.dcmtk import ECHOSCU, dcmtk_tool

AE_TITLE = "DICOMNODE"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
VERIFICATION = "1.2.840.10008.1.1"
#: dcmtk's tools by absolute path: the venv holds pynetdicom's own scripts of the same names.
FINDSCU = dcmtk_tool("findscu")
MOVESCU = dcmtk_tool("movescu")
GETSCU = dcmtk_tool("getscu")

ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                      b"UR", b"UT", b"UV"})


# --- encoding ---------------------------------------------------------------------------------

def tag_bytes(tag: int) -> bytes:
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF)


def explicit(tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One explicit VR little endian element; ``length`` overrides the encoded length."""
    size = len(value) if length is None else length
    code = vr.encode()
    if code in LONG_VRS:
        return tag_bytes(tag) + code + b"\x00\x00" + struct.pack("<I", size) + value
    return tag_bytes(tag) + code + struct.pack("<H", size) + value


def implicit(tag: int, value: bytes) -> bytes:
    return tag_bytes(tag) + struct.pack("<I", len(value)) + value


def pad_uid(uid: str) -> bytes:
    raw = uid.encode("latin-1")
    return raw + b"\x00" if len(raw) % 2 else raw


def encode(ds: Dataset, implicit_vr: bool = False) -> bytes:
    """``ds`` as little endian data-set bytes (no file meta)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit_vr
    write_dataset(buffer, ds)
    return buffer.getvalue()


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Group 0002 written by hand: any UID text, valid or not, goes in as it is."""
    body = (explicit(0x00020001, "OB", b"\x00\x01")
            + explicit(0x00020002, "UI", pad_uid(sop_class_uid))
            + explicit(0x00020003, "UI", pad_uid(sop_instance_uid))
            + explicit(0x00020010, "UI", pad_uid(transfer_syntax_uid))
            + explicit(0x00020012, "UI", pad_uid(PYDICOM_IMPLEMENTATION_UID)))
    return explicit(0x00020000, "UL", struct.pack("<I", len(body))) + body


def part10(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
           dataset: bytes) -> bytes:
    """Preamble, 'DICM', the file meta, then ``dataset`` exactly as given."""
    return (b"\x00" * 128 + b"DICM"
            + file_meta(sop_class_uid, sop_instance_uid, transfer_syntax_uid) + dataset)


# --- top-level elements of an explicit VR little endian data set -------------------------------

@dataclass(frozen=True)
class Element:
    tag: int
    raw: bytes  # header and value, as encoded


def elements(data: bytes) -> list[Element]:
    """Split the top level of a well-formed explicit VR LE data set with defined lengths
    (the synthetic instances here have no sequences and native pixel data)."""
    found, pos = [], 0
    while pos < len(data):
        group, number = struct.unpack_from("<HH", data, pos)
        code = data[pos + 4:pos + 6]
        if code in LONG_VRS:
            length, header = struct.unpack_from("<I", data, pos + 8)[0], 12
        else:
            length, header = struct.unpack_from("<H", data, pos + 6)[0], 8
        if length == UNDEFINED:
            raise ValueError("undefined lengths are not split here")
        end = pos + header + length
        found.append(Element((group << 16) | number, data[pos:end]))
        pos = end
    return found


def join(parts: list[Element]) -> bytes:
    return b"".join(part.raw for part in parts)


def index_of(parts: list[Element], tag: int) -> int:
    return next(i for i, part in enumerate(parts) if part.tag == tag)


def replace(data: bytes, tag: int, raw: bytes) -> bytes:
    """The data set with element ``tag`` replaced by the bytes ``raw``."""
    parts = elements(data)
    parts[index_of(parts, tag)] = Element(tag, raw)
    return join(parts)


def insert(data: bytes, raw: bytes, tag: int) -> bytes:
    """``raw`` inserted where an element ``tag`` belongs in ascending tag order."""
    parts = elements(data)
    position = next((i for i, part in enumerate(parts) if part.tag > tag), len(parts))
    parts.insert(position, Element(tag, raw))
    return join(parts)


def insert_before(data: bytes, tag: int, raw: bytes) -> bytes:
    """``raw`` (anything, even not an element) inserted just before element ``tag``."""
    parts = elements(data)
    parts.insert(index_of(parts, tag), Element(-1, raw))
    return join(parts)


def duplicate(data: bytes, tag: int) -> bytes:
    parts = elements(data)
    i = index_of(parts, tag)
    parts.insert(i + 1, parts[i])
    return join(parts)


def swap_with_next(data: bytes, tag: int) -> bytes:
    parts = elements(data)
    i = index_of(parts, tag)
    parts[i], parts[i + 1] = parts[i + 1], parts[i]
    return join(parts)


def nested_sequences(depth: int, tag: int = 0x00081115) -> bytes:
    """``depth`` undefined-length sequences, each the only element of its parent's item."""
    inner = b""
    for _ in range(depth):
        item = tag_bytes(ITEM) + struct.pack("<I", UNDEFINED) + inner + tag_bytes(ITEM_END) + (
            b"\x00" * 4)
        inner = (tag_bytes(tag) + b"SQ\x00\x00" + struct.pack("<I", UNDEFINED) + item
                 + tag_bytes(SEQUENCE_END) + b"\x00" * 4)
    return inner


def inside_first_fragment(data: bytes) -> int:
    """A cut position in the middle of the first pixel fragment of an encapsulated data set
    (after the Basic Offset Table item)."""
    header = tag_bytes(0x7FE00010) + b"OB\x00\x00" + struct.pack("<I", UNDEFINED)
    pos = data.index(header) + len(header)
    for _ in range(2):  # the offset table item, then the first fragment
        group, element, length = struct.unpack_from("<HHI", data, pos)
        assert (group << 16) | element == ITEM, f"({group:04X},{element:04X})"
        start, pos = pos + 8, pos + 8 + length
    assert length > 16, "the first fragment is too short to cut"
    return start + length // 2


def random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# --- good instances ---------------------------------------------------------------------------

ROWS = COLUMNS = 16


def good_ct(sop_instance_uid: str | None = None, *, rows: int = ROWS, columns: int = COLUMNS,
            study_uid: str | None = None, series_uid: str | None = None,
            pixel_seed: int = 0) -> Dataset:
    """A small, valid, native CT instance (16-bit, no sequences)."""
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyDate, ds.StudyTime = "20260101", "120000"
    ds.Modality = "CT"
    ds.PatientName, ds.PatientID = "Hostile^Test", "HOSTILE-1"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 7, 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.PixelData = random.Random(pixel_seed).randbytes(rows * columns * 2)
    ds["PixelData"].VR = "OW"
    return ds


@dataclass(frozen=True)
class Payload:
    """What one C-STORE carries: the command's UIDs (via the file meta) and the data set."""

    sop_class_uid: str
    sop_instance_uid: str
    dataset: bytes
    transfer_syntax_uid: str = ExplicitVRLittleEndian
    #: The presentation context proposed for it (defaults to the command's class).
    context_class_uid: str | None = None
    series_uid: str | None = None


def payload(ds: Dataset, dataset: bytes | None = None) -> Payload:
    """The explicit VR LE payload of ``ds``: the command's UIDs are those of ``ds``, the data
    set is ``ds`` encoded, or ``dataset`` when given."""
    return Payload(str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                   encode(ds) if dataset is None else dataset,
                   series_uid=str(ds.get("SeriesInstanceUID", "")) or None)


def edited(ds: Dataset, **keywords: object) -> Dataset:
    """A copy of ``ds`` with attributes set (None deletes)."""
    copied = copy.deepcopy(ds)
    for keyword, value in keywords.items():
        if value is None:
            delattr(copied, keyword)
        else:
            setattr(copied, keyword, value)
    return copied


# --- pynetdicom senders -----------------------------------------------------------------------

@contextlib.contextmanager
def chunked_sending() -> Iterator[None]:
    """pynetdicom sends a file's data set byte for byte (reading only its file meta)."""
    previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous


def _accept_any_uid(value: object) -> tuple[bool, str]:
    return True, ""


def _split_keeping_uids(path: Path) -> tuple[Dataset, int]:
    """pynetdicom's ``split_dataset``, but a UID with a backslash stays one text (pydicom
    splits it into values, which pynetdicom's C-STORE primitive refuses)."""
    meta, offset = split_dataset(path)
    for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"):
        element = meta[keyword]
        if isinstance(element.value, MultiValue):
            element._value = UID("\\".join(str(v) for v in element.value))
    return meta, offset


@contextlib.contextmanager
def lax_uids() -> Iterator[None]:
    """Let pynetdicom put any UID text (too long, with a backslash...) into a command."""
    previous = pynetdicom_config.VALIDATORS["UI"]
    pynetdicom_config.VALIDATORS["UI"] = _accept_any_uid
    original = pynetdicom_association.split_dataset
    pynetdicom_association.split_dataset = _split_keeping_uids  # type: ignore[assignment]
    try:
        yield
    finally:
        pynetdicom_config.VALIDATORS["UI"] = previous
        pynetdicom_association.split_dataset = original  # type: ignore[assignment]


def associate(port: int, contexts: list[tuple[str, list[str]]], calling: str = "HOSTILE",
              network_timeout: float | None = 30) -> Association:
    ae = AE(ae_title=calling)
    ae.network_timeout = network_timeout
    ae.acse_timeout = 30
    ae.dimse_timeout = 30
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    return ae.associate("127.0.0.1", port, ae_title=AE_TITLE)


def write_payload(path: Path, item: Payload) -> Path:
    """The Part-10 file pynetdicom's chunked sender reads; checks where it finds the data set."""
    meta = file_meta(item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax_uid)
    path.write_bytes(b"\x00" * 128 + b"DICM" + meta + item.dataset)
    offset = split_dataset(path)[1]
    if offset != 132 + len(meta):
        raise AssertionError(f"pynetdicom would send from byte {offset}, not {132 + len(meta)}")
    return path


def send_payloads(port: int, items: list[Payload], folder: Path) -> list[int | None]:
    """Send each payload byte for byte on one association; return the statuses (None: no
    response came, the association ended)."""
    contexts: dict[tuple[str, str], None] = {}
    for item in items:
        contexts[(item.context_class_uid or item.sop_class_uid, item.transfer_syntax_uid)] = None
    assoc = associate(port, [(abstract, [syntax]) for abstract, syntax in contexts])
    assert assoc.is_established, "the node refused the association"
    statuses = []
    try:
        with chunked_sending(), lax_uids():
            for number, item in enumerate(items):
                path = write_payload(folder / f"payload-{time.monotonic_ns()}-{number}.dcm",
                                     item)
                if not assoc.is_established:
                    statuses.append(None)
                    continue
                response = assoc.send_c_store(path)
                statuses.append(int(response.Status) if "Status" in response else None)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def send_payload(port: int, item: Payload, folder: Path) -> int | None:
    return send_payloads(port, [item], folder)[0]


def echo(port: int) -> int:
    """dcmtk's echoscu against the node; its exit status."""
    return subprocess.run([ECHOSCU, "-aec", AE_TITLE, "127.0.0.1", str(port)],
                          capture_output=True, timeout=60, check=False).returncode


def dcmtk(tool: str, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """A dcmtk tool run against the node, its log (stderr) merged into stdout."""
    return subprocess.run([tool, "-v", "-aet", "HOSTILE", "-aec", AE_TITLE, *args, "127.0.0.1",
                           str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=60, check=False)


# --- raw sockets and PDUs ---------------------------------------------------------------------

def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    """A PDU: type, reserved byte, 4-byte big endian length, body."""
    return struct.pack(">BBI", pdu_type, 0, len(body) if length is None else length) + body


def raw_connection(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


@dataclass(frozen=True)
class Closed:
    """How a raw connection ended, seen from the peer."""

    closed: bool  # the node closed it (EOF or reset)
    seconds: float
    received: bytes


def wait_closed(sock: socket.socket, timeout: float) -> Closed:
    """Read until the node closes the connection or ``timeout`` seconds pass."""
    started = time.monotonic()
    received = b""
    deadline = started + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return Closed(False, time.monotonic() - started, received)
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return Closed(False, time.monotonic() - started, received)
        except (ConnectionResetError, BrokenPipeError):
            return Closed(True, time.monotonic() - started, received)
        if not chunk:
            return Closed(True, time.monotonic() - started, received)
        received += chunk


def pdu_types(received: bytes) -> list[int]:
    """Types of the PDUs in ``received`` (as far as they are complete)."""
    types, pos = [], 0
    while pos + 6 <= len(received):
        kind, _, length = struct.unpack_from(">BBI", received, pos)
        types.append(kind)
        pos += 6 + length
    return types


def association_socket(assoc: Association) -> socket.socket:
    """The TCP socket under an established pynetdicom association."""
    transport = assoc.dul.socket
    assert transport is not None and transport.socket is not None
    return transport.socket
