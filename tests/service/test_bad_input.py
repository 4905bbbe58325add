"""Bad input against a real ``dicomnode serve``: every kind is refused with its own typed reason.

One node per configuration serves the whole module. Each case checks what the sender gets (the
exact C-STORE status from :data:`dicomnode.receiver.errors.STATUS`, or what it sees of the
association: a rejected presentation context, an A-ABORT, a closed connection), the typed
reason ``dicomnode status --json`` shows for it (a rejection row of that kind, or the
association row's outcome and reason), that nothing of it was indexed or filed as good, and
that right after, the node still answers a C-ECHO and stores a good instance.

The hostile bytes are built in :mod:`tests.service.hostile` from small good instances.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian as EXPLICIT,
    ImplicitVRLittleEndian as IMPLICIT,
    JPEG2000Lossless,
    generate_uid,
)

from dicomnode.receiver.errors import STATUS, RejectKind
from dicomnode.storage.spool import safe_name
from tests.service import hostile
from tests.service.conftest import EXAMPLE_CT, RunningNode, base_config, free_port, running_nodes
from tests.service.hostile import CT_IMAGE_STORAGE, Payload, edited, encode, good_ct, payload

# pydicom warns about each invalid UID it writes or reads: the point of several cases.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI",
                                        "ignore:The value length")

#: The main node's timeouts: a connection that sends no A-ASSOCIATE-RQ is closed after
#: ACSE_TIMEOUT seconds, an association silent for NETWORK_TIMEOUT seconds is aborted.
ACSE_TIMEOUT = 2.0
NETWORK_TIMEOUT = 3.0
#: Slack on top of a timeout before the test calls the node late (a loaded 2-core machine).
MARGIN = 3.0
QUARANTINE_MAX = 300_000  # "300 kB"

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
#: A-ASSOCIATE-AC presentation context results (PS3.8 9.3.3.2).
ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03
TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04
A_ABORT = 0x07


# --- nodes ------------------------------------------------------------------------------------

def _start(tmp_path_factory: pytest.TempPathFactory, name: str,
           **overrides: dict[str, Any]) -> Iterator[RunningNode]:
    with running_nodes(tmp_path_factory.mktemp(name)) as launch:
        port = free_port()
        yield launch(base_config(port, **overrides), port)


@pytest.fixture(scope="module")
def main_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    yield from _start(tmp_path_factory, "bad-input",
                      node={"acse_timeout": ACSE_TIMEOUT, "network_timeout": NETWORK_TIMEOUT})


@pytest.fixture(scope="module")
def strict_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    yield from _start(tmp_path_factory, "bad-input-strict", node={"uid_validation": "strict"})


@pytest.fixture(scope="module")
def quarantine_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    yield from _start(tmp_path_factory, "bad-input-quarantine",
                      storage={"quarantine_max": "300 kB"})


# --- what the node holds ----------------------------------------------------------------------

def spool_files(node: RunningNode) -> set[Path]:
    return set(node.spool.glob("*/*/*.dcm"))


@dataclass(frozen=True)
class Snapshot:
    instances: int
    spool: set[Path]
    rejections: dict[str, int]
    association_ids: set[int]

    @classmethod
    def take(cls, node: RunningNode) -> Snapshot:
        status = node.quick_status()
        rows = node.query("select id from associations")
        return cls(status["instances"], spool_files(node), dict(status["rejections"]["by_kind"]),
                   {int(r[0]) for r in rows})


def new_rejections(before: Snapshot, status: dict[str, Any]) -> dict[str, int]:
    """Rejection rows added since ``before``, by kind."""
    added = {}
    for kind, count in status["rejections"]["by_kind"].items():
        if count > before.rejections.get(kind, 0):
            added[kind] = count - before.rejections.get(kind, 0)
    return added


def association_rows(node: RunningNode, calling: str) -> list[dict[str, Any]]:
    """Association rows of a calling AE title, newest first (read from the index directly:
    the status lists only the 20 most recent)."""
    rows = node.query("select id, outcome, reason, detail from associations "
                      f"where calling_ae_title = '{calling}' order by id desc")
    return [{"id": r[0], "outcome": r[1], "reason": r[2], "detail": r[3]} for r in rows]


def rejection_rows(node: RunningNode, *, uid: str | None = None,
                   sop_class: str | None = None) -> list[dict[str, Any]]:
    """Rejection rows of a SOP Instance UID (or, for negotiation refusals, of a SOP class)."""
    if uid is not None:
        where = "sop_instance_uid = '" + uid.replace("'", "''") + "'"
    else:
        where = f"sop_instance_uid is null and sop_class_uid = '{sop_class}'"
    rows = node.query("select kind, status, message, quarantine_path from rejections "
                      f"where {where} order by id")
    return [{"kind": r[0], "status": r[1], "message": r[2], "kept": r[3]} for r in rows]


# --- one case ---------------------------------------------------------------------------------

@dataclass
class Ctx:
    node: RunningNode
    folder: Path
    before: Snapshot
    #: The bad input's UIDs: nothing may be indexed or filed under them.
    uids: list[str] = field(default_factory=list)
    series: list[str] = field(default_factory=list)

    def cli_status(self) -> dict[str, Any]:
        """The real ``dicomnode status --json``."""
        return self.node.status()

    def send(self, item: Payload) -> int | None:
        self.uids.append(item.sop_instance_uid)
        if item.series_uid:
            self.series.append(item.series_uid)
        return hostile.send_payload(self.node.port, item, self.folder)


def assert_refused(ctx: Ctx, item: Payload, *kinds: RejectKind) -> RejectKind:
    """Send ``item``; the sender gets the status of one of ``kinds`` and the status shows a
    rejection row of that kind, with that status, for the command's SOP Instance UID."""
    sent = ctx.send(item)
    expected = {f"{k.value} 0x{k.status:04X}" for k in kinds}
    if sent is None:
        ended = _ended(ctx, "HOSTILE")
        raise AssertionError(f"the sender got no C-STORE response: the association ended "
                             f"({ended['outcome']}, {ended['reason']}) and the status shows no "
                             f"rejection row ({new_rejections(ctx.before, ctx.cli_status())}); "
                             f"expected one of {expected}")
    assert sent in {k.status for k in kinds}, f"status 0x{sent:04X}, expected one of {expected}"
    status = ctx.cli_status()
    # A command UID with a backslash is two values to pynetdicom, which keeps the first.
    command_uid = item.sop_instance_uid.split("\\")[0]
    rows = [r for r in status["rejections"]["recent"] if r["sop_instance_uid"] == command_uid]
    assert len(rows) == 1, json.dumps(status["rejections"], indent=1)[:3000]
    row = rows[0]
    kind = RejectKind(row["kind"])
    assert kind in kinds, row
    assert row["status"] == f"0x{STATUS[kind]:04X}" and sent == STATUS[kind], (row, hex(sent))
    assert new_rejections(ctx.before, status) == {kind.value: 1}
    return kind


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Ctx], None]
    node: str = "main_node"


CASES: list[Case] = []


def case(node: str = "main_node") -> Callable[[Callable[[Ctx], None]], Callable[[Ctx], None]]:
    def register(run: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
        CASES.append(Case(run.__name__, run, node))
        return run
    return register


def store_case(*kinds: RejectKind, node: str = "main_node"
               ) -> Callable[[Callable[[], Payload]], Callable[[], Payload]]:
    """A C-STORE whose payload ``build()`` makes must be refused with one of ``kinds``."""
    def register(build: Callable[[], Payload]) -> Callable[[], Payload]:
        def run(ctx: Ctx) -> None:
            assert_refused(ctx, build(), *kinds)
        CASES.append(Case(build.__name__, run, node))
        return build
    return register


# --- C-STORE data sets ------------------------------------------------------------------------

@store_case(RejectKind.MISSING_UID)
def missing_sop_instance_uid() -> Payload:
    good = good_ct()
    return payload(good, dataset=encode(edited(good, SOPInstanceUID=None)))


@store_case(RejectKind.UID_MISMATCH)
def sop_instance_uid_mismatch() -> Payload:
    good = good_ct()
    return payload(good, dataset=encode(edited(good, SOPInstanceUID=generate_uid())))


@store_case(RejectKind.PART10_IN_DATASET)
def part10_file_as_dataset() -> Payload:
    good = payload(good_ct())
    whole = hostile.part10(good.sop_class_uid, good.sop_instance_uid, EXPLICIT,
                           good.dataset)
    return Payload(good.sop_class_uid, good.sop_instance_uid, whole, series_uid=good.series_uid)


@store_case(RejectKind.PIXEL_DATA)
def pixel_data_twice_as_long() -> Payload:
    good = good_ct()
    return payload(edited(good, PixelData=good.PixelData * 2))


@store_case(RejectKind.PIXEL_DATA)
def pixel_data_without_rows() -> Payload:
    return payload(edited(good_ct(), Rows=None))


@store_case(RejectKind.INVALID_VR)
def garbage_vr_bytes() -> Payload:
    good = payload(good_ct())
    garbage = hostile.tag_bytes(0x00080060) + b"Z\x01\x02\x00CT"  # VR bytes "Z\x01"
    bad = hostile.replace(good.dataset, 0x00080060, garbage)
    return Payload(good.sop_class_uid, good.sop_instance_uid, bad, series_uid=good.series_uid)


@store_case(RejectKind.SOP_CLASS_MISMATCH)
def mr_dataset_on_ct_context() -> Payload:
    good = good_ct()
    return payload(good, dataset=encode(edited(good, SOPClassUID=hostile.MR_IMAGE_STORAGE,
                                               Modality="MR")))


def _bad_uid(uid: str) -> Payload:
    """Command and data set both carry the text ``uid`` as SOP Instance UID (byte for byte
    the same value in both)."""
    good = good_ct(uid)
    return Payload(CT_IMAGE_STORAGE, uid, encode(good), series_uid=str(good.SeriesInstanceUID))


@store_case(RejectKind.INVALID_UID)
def uid_with_slash() -> Payload:
    return _bad_uid("1.2.3/../4")


@store_case(RejectKind.INVALID_UID)
def uid_with_backslash() -> Payload:
    return _bad_uid("1.2.840.10008.99\\4")


@store_case(RejectKind.INVALID_UID)
def uid_with_empty_component() -> Payload:
    return _bad_uid("1.2..3")


@case()
def uid_longer_than_64(ctx: Ctx) -> None:
    """pynetdicom cannot decode a C-STORE-RQ whose Affected SOP Instance UID is longer than 64
    characters and drops the association without a status: the node records why."""
    item = _bad_uid("1.2.826.0.1.3680043.8.498." + "1" * 50)
    assert ctx.send(item) is None
    ended = _ended(ctx, "HOSTILE")
    assert (ended["outcome"], ended["reason"]) == ("aborted", "protocol-error"), ended
    status = ctx.cli_status()
    assert new_rejections(ctx.before, status) == {"invalid-uid": 1}
    row = status["rejections"]["recent"][0]
    assert row["kind"] == "invalid-uid" and item.sop_instance_uid in row["message"], row


@store_case(RejectKind.INVALID_UID)
def series_uid_longer_than_64() -> Payload:
    long_series = "1.2.826.0.1.3680043.8.498." + "2" * 50
    return payload(good_ct(series_uid=long_series))


@store_case(RejectKind.INVALID_UID, node="strict_node")
def leading_zero_uid_under_strict() -> Payload:
    return _bad_uid(f"1.2.826.0.1.3680043.8.498.0{time.time_ns()}")


@store_case(RejectKind.TRUNCATED, RejectKind.MALFORMED)
def random_bytes_implicit_vr() -> Payload:
    return Payload(CT_IMAGE_STORAGE, generate_uid(), hostile.random_bytes(13, 4096),
                   IMPLICIT)


@store_case(RejectKind.TRUNCATED, RejectKind.MALFORMED, RejectKind.INVALID_VR)
def random_bytes_explicit_vr() -> Payload:
    return Payload(CT_IMAGE_STORAGE, generate_uid(), hostile.random_bytes(13, 4096))


@store_case(RejectKind.TRUNCATED)
def jpeg2000_cut_inside_a_fragment() -> Payload:
    ds = pydicom.dcmread(min(EXAMPLE_CT.iterdir()))
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyInstanceUID = generate_uid()
    data = encode(ds)
    cut = hostile.inside_first_fragment(data)
    return Payload(CT_IMAGE_STORAGE, str(ds.SOPInstanceUID), data[:cut], JPEG2000Lossless,
                   series_uid=str(ds.SeriesInstanceUID))


@store_case(RejectKind.TRUNCATED)
def element_length_0xfffffff0() -> Payload:
    good = payload(good_ct())
    bad = hostile.insert(good.dataset, hostile.explicit(0x00090010, "LO", b"HOSTILE "), 0x00090010)
    bad = hostile.insert(bad, hostile.explicit(0x00091001, "OB", b"\x00" * 16, length=0xFFFFFFF0),
                         0x00091001)
    return Payload(good.sop_class_uid, good.sop_instance_uid, bad, series_uid=good.series_uid)


@store_case(RejectKind.MALFORMED)
def sequences_nested_300_deep() -> Payload:
    good = payload(good_ct())
    bad = hostile.insert(good.dataset, hostile.nested_sequences(300), 0x00081115)
    return Payload(good.sop_class_uid, good.sop_instance_uid, bad, series_uid=good.series_uid)


@store_case(RejectKind.INVALID_LENGTH)
def us_value_of_3_bytes() -> Payload:
    good = payload(good_ct())
    bad = hostile.replace(good.dataset, 0x00280002,
                          hostile.explicit(0x00280002, "US", b"\x01\x00\x00"))
    return Payload(good.sop_class_uid, good.sop_instance_uid, bad, series_uid=good.series_uid)


def _with_stray(tag: int) -> Payload:
    good = payload(good_ct())
    bad = hostile.insert_before(good.dataset, 0x00080060, hostile.tag_bytes(tag) + b"\x00" * 4)
    return Payload(good.sop_class_uid, good.sop_instance_uid, bad, series_uid=good.series_uid)


@store_case(RejectKind.MALFORMED)
def stray_item_delimitation() -> Payload:
    return _with_stray(hostile.ITEM_END)


@store_case(RejectKind.MALFORMED)
def stray_sequence_delimitation() -> Payload:
    return _with_stray(hostile.SEQUENCE_END)


@store_case(RejectKind.MALFORMED)
def stray_item() -> Payload:
    return _with_stray(hostile.ITEM)


@store_case(RejectKind.MALFORMED)
def repeated_tag() -> Payload:
    good = payload(good_ct())
    return Payload(good.sop_class_uid, good.sop_instance_uid,
                   hostile.duplicate(good.dataset, 0x00080060), series_uid=good.series_uid)


@store_case(RejectKind.MALFORMED)
def tags_out_of_order() -> Payload:
    good = payload(good_ct())
    return Payload(good.sop_class_uid, good.sop_instance_uid,
                   hostile.swap_with_next(good.dataset, 0x00080060), series_uid=good.series_uid)


@case()
def dicomdir_sent_as_ct(ctx: Ctx) -> None:
    """storescu sends a DICOMDIR under a UID it found in a record: a warning, kept aside."""
    record = Dataset()
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = "PATIENT"
    record.PatientID = "HOSTILE-1"
    directory = Dataset()
    directory.FileSetID = "HOSTILE"
    directory.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    directory.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    directory.FileSetConsistencyFlag = 0
    directory.DirectoryRecordSequence = Sequence([record])
    kind = assert_refused(ctx, Payload(CT_IMAGE_STORAGE, generate_uid(), encode(directory)),
                          RejectKind.MEDIA_DIRECTORY)
    assert STATUS[kind] == 0xB007
    row = rejection_rows(ctx.node, uid=ctx.uids[-1])[0]
    assert row["kept"] and (ctx.node.spool / row["kept"]).is_file()


# --- negotiation ------------------------------------------------------------------------------

def _context_refused(ctx: Ctx, abstract: str, kind: RejectKind) -> None:
    """The status shows a negotiation refusal of ``kind`` for the abstract syntax."""
    status = ctx.cli_status()
    rows = [r for r in status["rejections"]["recent"]
            if r["sop_class_uid"] == abstract and r["sop_instance_uid"] is None]
    assert rows, json.dumps(status["rejections"], indent=1)[:3000]
    assert rows[0]["kind"] == kind.value and rows[0]["status"] == "0x0122", rows[0]
    # One row per refused context (movescu and getscu propose more than one).
    assert set(new_rejections(ctx.before, status)) == {kind.value}


def _propose_only(ctx: Ctx, abstract: str, syntaxes: list[str], result: int) -> None:
    assoc = hostile.associate(ctx.node.port, [(abstract, syntaxes)], calling="HOSTILE")
    try:
        refused = [(str(c.abstract_syntax), c.result) for c in assoc.rejected_contexts]
        assert refused == [(abstract, result)], refused
        assert not assoc.accepted_contexts and not assoc.is_established
    finally:
        if assoc.is_established:
            assoc.release()


@case()
def unknown_transfer_syntax_only(ctx: Ctx) -> None:
    _propose_only(ctx, CT_IMAGE_STORAGE, ["1.2.3.4.5.6"], TRANSFER_SYNTAXES_NOT_SUPPORTED)
    _context_refused(ctx, CT_IMAGE_STORAGE, RejectKind.UNSUPPORTED_TRANSFER_SYNTAX)


@case()
def media_storage_directory_context(ctx: Ctx) -> None:
    _propose_only(ctx, hostile.MEDIA_STORAGE_DIRECTORY, [EXPLICIT],
                  ABSTRACT_SYNTAX_NOT_SUPPORTED)
    _context_refused(ctx, hostile.MEDIA_STORAGE_DIRECTORY, RejectKind.UNSUPPORTED_SOP_CLASS)


QUERY = ("-P", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=HOSTILE-1")


@case()
def c_find(ctx: Ctx) -> None:
    sent = hostile.dcmtk(hostile.FINDSCU, ctx.node.port, *QUERY)
    assert sent.returncode != 0 and "No Acceptable Presentation Contexts" in sent.stdout, (
        sent.stdout)
    _context_refused(ctx, PATIENT_ROOT_FIND, RejectKind.UNSUPPORTED_SOP_CLASS)


@case()
def c_move(ctx: Ctx) -> None:
    sent = hostile.dcmtk(hostile.MOVESCU, ctx.node.port, "-aem", "HOSTILE", *QUERY)
    assert sent.returncode != 0 and "No Acceptable Presentation Contexts" in sent.stdout, (
        sent.stdout)
    _context_refused(ctx, PATIENT_ROOT_MOVE, RejectKind.UNSUPPORTED_SOP_CLASS)


@case()
def c_get(ctx: Ctx) -> None:
    sent = hostile.dcmtk(hostile.GETSCU, ctx.node.port, *QUERY)
    # getscu also proposes storage contexts (for its C-STORE sub-operations), so the
    # association is accepted; only the C-GET context is refused.
    assert sent.returncode != 0 and "No adequate Presentation Contexts for sending C-GET" in (
        sent.stdout), sent.stdout
    _context_refused(ctx, PATIENT_ROOT_GET, RejectKind.UNSUPPORTED_SOP_CLASS)


# --- the connection ---------------------------------------------------------------------------

def _no_association_recorded(ctx: Ctx) -> None:
    """A connection that never sent an A-ASSOCIATE-RQ: no association was accepted or left
    open, nothing refused as an instance."""
    status = ctx.cli_status()
    added = [a for a in status["associations"]["recent"]
             if a["id"] not in ctx.before.association_ids]
    assert all(a["outcome"] in ("rejected", "aborted") for a in added), added
    assert new_rejections(ctx.before, status) == {}


def _closed_by_node(ctx: Ctx, first: bytes, then_close: bool = False) -> None:
    sock = hostile.raw_connection(ctx.node.port)
    try:
        sock.sendall(first)
        if then_close:
            sock.close()
            return
        seen = hostile.wait_closed(sock, ACSE_TIMEOUT + MARGIN)
        assert seen.closed, (
            f"the node kept the connection open for {seen.seconds:.1f} s after {first[:16]!r} "
            f"(node.acse_timeout is {ACSE_TIMEOUT} s); it answered PDU types "
            f"{sorted(set(hostile.pdu_types(seen.received)))}")
        assert set(hostile.pdu_types(seen.received)) <= {A_ABORT}, seen.received[:64]
    finally:
        sock.close()


@case()
def random_bytes_before_association(ctx: Ctx) -> None:
    _closed_by_node(ctx, b"\xa5" + hostile.random_bytes(14, 1023))
    _no_association_recorded(ctx)


@case()
def http_request_on_dicom_port(ctx: Ctx) -> None:
    _closed_by_node(ctx, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    _no_association_recorded(ctx)


@case()
def unknown_pdu_type(ctx: Ctx) -> None:
    """A well-framed PDU of a type that does not exist (0x09, 4 bytes)."""
    _closed_by_node(ctx, hostile.pdu(0x09, b"abcd"))
    _no_association_recorded(ctx)


@case()
def silent_connection(ctx: Ctx) -> None:
    """A port probe: connects, sends nothing."""
    _closed_by_node(ctx, b"")
    _no_association_recorded(ctx)


@case()
def four_gb_associate_rq_then_silence(ctx: Ctx) -> None:
    _closed_by_node(ctx, hostile.pdu(0x01, b"", length=0xFFFFFFF0))
    _no_association_recorded(ctx)


@case()
def four_gb_associate_rq_then_close(ctx: Ctx) -> None:
    _closed_by_node(ctx, hostile.pdu(0x01, b"\x00\x01\x00\x00", length=0xFFFFFFF0),
                    then_close=True)
    _no_association_recorded(ctx)


def _ended(ctx: Ctx, calling: str) -> dict[str, Any]:
    """The association row of ``calling``, once it is no longer open (CLI status)."""
    deadline = time.monotonic() + 10
    while (rows := association_rows(ctx.node, calling)) and rows[0]["outcome"] == "open":
        assert time.monotonic() < deadline, f"association row left open: {rows[0]}"
        time.sleep(0.2)
    assert rows, f"no association row for {calling}"
    shown = next(a for a in ctx.cli_status()["associations"]["recent"] if a["id"] ==
                 rows[0]["id"])
    return shown


@case()
def silent_association(ctx: Ctx) -> None:
    assoc = hostile.associate(ctx.node.port, [(hostile.VERIFICATION, [EXPLICIT])],
                              calling="HOSTILE19", network_timeout=None)
    assert assoc.is_established
    started = time.monotonic()
    while assoc.is_alive() and time.monotonic() - started < NETWORK_TIMEOUT + MARGIN:
        time.sleep(0.05)
    assert assoc.is_aborted, "the node did not abort an association silent for longer than " \
                             f"node.network_timeout ({NETWORK_TIMEOUT} s)"
    assert time.monotonic() - started >= NETWORK_TIMEOUT - 0.5
    row = _ended(ctx, "HOSTILE19")
    assert row["outcome"] == "aborted" and row["reason"], row
    # The node aborted it (network timeout); the peer sent no A-ABORT.
    assert row["reason"] not in ("aborted-by-peer", "released-by-peer"), row


@case()
def junk_p_data_after_associate_ac(ctx: Ctx) -> None:
    assoc = hostile.associate(ctx.node.port, [(hostile.VERIFICATION, [EXPLICIT])],
                              calling="HOSTILE25")
    assert assoc.is_established
    hostile.association_socket(assoc).sendall(b"\x04\x00\x00\x00\x00\x05junk!")
    started = time.monotonic()
    while assoc.is_alive() and time.monotonic() - started < 5:
        time.sleep(0.05)
    assert assoc.is_aborted, "the node neither aborted nor closed after an undecodable P-DATA"
    row = _ended(ctx, "HOSTILE25")
    assert row["outcome"] == "aborted" and row["reason"], row
    assert row["reason"] != "released-by-peer", row


# --- the parametrized test --------------------------------------------------------------------

def _good_instance_stored(node: RunningNode, folder: Path) -> None:
    assert hostile.echo(node.port) == 0, "no C-ECHO answer after the bad input"
    before = node.quick_status()["instances"]
    good = good_ct()
    assert hostile.send_payload(node.port, payload(good), folder) == 0x0000
    assert node.quick_status()["instances"] == before + 1
    assert (node.spool / Path(*[safe_name(str(u)) for u in (
        good.StudyInstanceUID, good.SeriesInstanceUID)]) / f"{good.SOPInstanceUID}.dcm"
    ).is_file()


def _nothing_held(ctx: Ctx) -> None:
    node = ctx.node
    deadline = time.monotonic() + 10  # rows of associations that just ended get closed
    while node.quick_status()["associations"]["by_outcome"].get("open"):
        assert time.monotonic() < deadline, node.quick_status()["associations"]["recent"][:3]
        time.sleep(0.2)
    status = node.quick_status()
    assert status["instances"] == ctx.before.instances
    assert not {s["series_instance_uid"] for s in status["series"]} & set(ctx.series)
    assert spool_files(node) == ctx.before.spool
    for uid in ctx.uids:
        assert not list(node.spool.glob(f"*/*/{safe_name(uid)}.dcm")), uid
        quoted = uid.replace("'", "''")
        assert node.query(
            f"select count(*) from instances where sop_instance_uid = '{quoted}'") == [(0,)]


@pytest.mark.parametrize("bad", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_typed_and_harmless(bad: Case, request: pytest.FixtureRequest,
                                                 tmp_path: Path) -> None:
    node: RunningNode = request.getfixturevalue(bad.node)
    ctx = Ctx(node, tmp_path, Snapshot.take(node))
    try:
        bad.run(ctx)
    finally:
        assert node.process is not None and node.process.poll() is None, "the node died"
    _nothing_held(ctx)
    _good_instance_stored(node, tmp_path)


def test_there_are_enough_kinds() -> None:
    assert len(CASES) >= 25


# --- accepted with a warning, duplicates and conflicts ---------------------------------------

def test_leading_zero_uid_is_accepted_when_lenient(main_node: RunningNode,
                                                   tmp_path: Path) -> None:
    uid = f"1.2.826.0.1.3680043.8.498.0{time.time_ns()}"
    before = main_node.quick_status()["instances"]
    assert hostile.send_payload(main_node.port, payload(good_ct(uid)), tmp_path) == 0x0000
    status = main_node.status()
    assert status["instances"] == before + 1
    assert not [r for r in status["rejections"]["recent"] if r["sop_instance_uid"] == uid]
    assert main_node.query("select count(*) from instances where sop_instance_uid = "
                           f"'{uid}'") == [(1,)]
    deadline = time.monotonic() + 10
    while True:
        events = [json.loads(line) for line in main_node.logs[-1].read_text().splitlines()
                  if line.startswith("{")]
        lenient = [e for e in events if e.get("event") == "store.uid_lenient"
                   and e.get("sop_instance_uid") == uid]
        if lenient:
            break
        assert time.monotonic() < deadline, "no store.uid_lenient warning in the log"
        time.sleep(0.2)
    assert lenient[0]["level"] == "WARNING" and uid in lenient[0]["uids"]
    _good_instance_stored(main_node, tmp_path)


def test_duplicate_then_conflict_under_one_uid(main_node: RunningNode, tmp_path: Path) -> None:
    node = main_node
    good = good_ct()
    uid = str(good.SOPInstanceUID)
    before = node.quick_status()
    assert hostile.send_payloads(node.port, [payload(good), payload(good)], tmp_path) == [0, 0]
    assert node.query(f"select receive_count from instances where sop_instance_uid = '{uid}'"
                      ) == [(2,)]
    assert node.quick_status()["instances"] == before["instances"] + 1
    held = list(node.spool.glob(f"*/*/{uid}.dcm"))
    assert len(held) == 1
    held_bytes = held[0].read_bytes()

    other_series = edited(good, SeriesInstanceUID=generate_uid())
    other_pixels = edited(good, PixelData=good_ct(pixel_seed=1).PixelData)
    for number, different in enumerate((other_series, other_pixels), start=1):
        assert hostile.send_payload(node.port, payload(different), tmp_path) == 0xC010
        status = node.status()
        assert status["instances"] == before["instances"] + 1
        assert held[0].read_bytes() == held_bytes and list(
            node.spool.glob(f"*/*/{uid}.dcm")) == held
        rows = [r for r in status["rejections"]["recent"] if r["sop_instance_uid"] == uid]
        assert [r["kind"] for r in rows] == ["uid-conflict"] * number
        assert rows[0]["status"] == "0xC010"
        assert rows[0]["kept"].startswith(".conflicts/")
        assert status["conflicts"]["files"] == number
        kept = node.spool / rows[0]["kept"]
        assert kept.read_bytes().endswith(encode(different))
    assert {s["series_instance_uid"] for s in node.quick_status()["series"]} & {
        str(other_series.SeriesInstanceUID)} == set()
    _good_instance_stored(node, tmp_path)


# --- the quarantine is bounded ----------------------------------------------------------------

def test_quarantine_stays_within_quarantine_max(quarantine_node: RunningNode,
                                                tmp_path: Path) -> None:
    node = quarantine_node
    quarantine = node.spool / ".quarantine"
    uids = []
    for _ in range(10):
        # ~58 kB of native pixels whose Rows do not match: pixel-data-length, quarantined.
        good = good_ct(rows=170, columns=170)
        bad = edited(good, Rows=171)
        uids.append(str(bad.SOPInstanceUID))
        assert hostile.send_payload(node.port, payload(bad), tmp_path) == 0xC008
        held = sum(p.stat().st_size for p in quarantine.iterdir())
        assert held <= QUARANTINE_MAX, held
    status = node.status()
    rows = {u: rejection_rows(node, uid=u) for u in uids}
    assert all(len(r) == 1 and r[0]["kind"] == "pixel-data-length" for r in rows.values())
    assert status["rejections"]["by_kind"] == {"pixel-data-length": 10}
    kept = [rows[u][0]["kept"] for u in uids]
    assert all(kept), kept
    present = [(node.spool / k).is_file() for k in kept]
    # Oldest removed first: the files still there are the newest ones.
    assert present == sorted(present) and present[-1] and not present[0], present
    files = list(quarantine.iterdir())
    assert status["quarantine"] == {"files": len(files),
                                    "bytes": sum(p.stat().st_size for p in files)}
    assert status["quarantine"]["bytes"] <= QUARANTINE_MAX
    assert status["instances"] == 0
    _good_instance_stored(node, tmp_path)
