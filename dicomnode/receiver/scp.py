"""The DICOM listener: C-ECHO and C-STORE SCP on pynetdicom.

Association policy (checked when the A-ASSOCIATE-RQ arrives): the source address must be in
``node.allowed_hosts``, the Calling AE Title in ``node.allowed_calling_ae_titles`` (when these
lists are not empty) and the Called AE Title must be ours (``node.require_called_ae_title``).
pynetdicom enforces ``node.max_associations``. Every association gets an audit row.

C-STORE: an instance is answered 0x0000 only after its file is durable in the spool and its row
is committed in the index. Failure statuses used (PS3.4 Annex B.2.3):

========  ===============================================================
0xA700    Out of Resources: free disk below ``storage.min_free``
0xA701    Out of Resources: the spool file could not be written
0xA702    Out of Resources: the index row could not be written
0xC000    Cannot Understand: truncated or malformed data set
========  ===============================================================
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pydicom.filewriter import write_file_meta_info
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy.exc import SQLAlchemyError

from dicomnode.config import NodeConfig, StorageConfig
from dicomnode.logs import log_event
from dicomnode.receiver.dataset import DatasetSummary, inspect_dataset
from dicomnode.receiver.errors import CorruptDataset, ReceiverError, RejectKind
from dicomnode.receiver.spool import Spool
from dicomnode.store import IndexOutcome, InstanceIndex, InstanceRecord, SeriesKey, StudyKey

LOGGER = logging.getLogger("dicomnode.receiver")

STATUS_SUCCESS = 0x0000
STATUS_DISK_RESERVE = 0xA700
STATUS_WRITE_FAILED = 0xA701
STATUS_INDEX_FAILED = 0xA702
STATUS_CANNOT_UNDERSTAND = 0xC000

#: Seconds a graceful stop waits for open associations before aborting them.
STOP_GRACE = 5.0

#: Largest P-DATA PDU we accept; large PDUs mean fewer fragments to reassemble per instance.
MAX_PDU_SIZE = 4 * 1024 * 1024

SeriesStarted = Callable[[IndexOutcome], None]


def derived_uid(kind: str, *parts: str) -> str:
    """A deterministic UID (2.25 form, PS3.5 B.2) for a missing Study/Series Instance UID."""
    digest = hashlib.sha256("\x1f".join((kind, *parts)).encode("utf-8")).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def describe_instance(summary: DatasetSummary, calling_ae_title: str,
                      sop_class_uid: str) -> tuple[StudyKey, SeriesKey]:
    """Study and series of an instance; empty UIDs are derived (see the README)."""
    text = summary.text
    study_uid = text("StudyInstanceUID")
    study_synth = not study_uid
    if study_synth:
        study_uid = derived_uid("study", calling_ae_title, text("PatientID"), text("PatientName"),
                                text("StudyDate"), text("StudyTime"), text("AccessionNumber"),
                                text("StudyID"))
    series_uid = text("SeriesInstanceUID")
    series_synth = not series_uid
    if series_synth:
        series_uid = derived_uid("series", study_uid, text("Modality"), text("SeriesNumber"),
                                 text("SeriesDescription"), text("SeriesDate"),
                                 text("SeriesTime"), text("FrameOfReferenceUID"), sop_class_uid)
    study = StudyKey(study_uid, study_synth, text("PatientID") or None,
                     text("PatientName") or None, text("StudyDate") or None,
                     text("AccessionNumber") or None, text("StudyDescription") or None)
    series = SeriesKey(series_uid, series_synth, text("Modality") or None,
                       text("SeriesDescription") or None, text("SeriesNumber") or None,
                       sop_class_uid, summary.has_pixels)
    return study, series


def _in_networks(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
                 ) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def tls_context(node: NodeConfig) -> ssl.SSLContext | None:
    """Server-side TLS context from ``node.tls``, or None when TLS is off."""
    tls = node.tls
    if not tls.enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(tls.certificate), str(tls.private_key))
        if tls.ca_certificates is not None:
            context.load_verify_locations(str(tls.ca_certificates))
            context.verify_mode = (ssl.CERT_REQUIRED if tls.require_client_certificate
                                   else ssl.CERT_OPTIONAL)
    except (OSError, ssl.SSLError) as exc:
        raise ReceiverError(f"cannot load the TLS certificate or key (node.tls): {exc}") from exc
    return context


class Receiver:
    """The C-ECHO/C-STORE SCP: association policy, spool writes, indexing, audit."""

    def __init__(self, node: NodeConfig, storage: StorageConfig, index: InstanceIndex,
                 spool: Spool, on_series_started: SeriesStarted):
        self.node = node
        self.storage = storage
        self.index = index
        self.spool = spool
        self.on_series_started = on_series_started
        self._networks = [ipaddress.ip_network(h, strict=False) for h in node.allowed_hosts]
        self._audit_ids: dict[Association, int] = {}
        self._audit_lock = threading.Lock()
        self._server: Any = None

    # -- lifecycle ---------------------------------------------------------------------------

    def build_ae(self) -> AE:
        ae = AE(ae_title=self.node.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        # Called AE title is checked in _on_requested so the rejection is audited.
        ae.require_called_aet = False
        ae.maximum_associations = self.node.max_associations
        ae.network_timeout = self.node.network_timeout
        ae.acse_timeout = self.node.network_timeout
        ae.dimse_timeout = self.node.network_timeout
        ae.maximum_pdu_size = MAX_PDU_SIZE
        return ae

    def start(self) -> None:
        """Listen on ``node.host:node.port`` (returns at once; associations get threads)."""
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_ended, ["released"]),
            (evt.EVT_ABORTED, self._on_ended, ["aborted"]),
            (evt.EVT_CONN_CLOSE, self._on_ended, ["aborted"]),
            (evt.EVT_C_STORE, self._on_store),
        ]
        try:
            self._server = self.build_ae().start_server(
                (self.node.host, self.node.port), block=False, evt_handlers=handlers,
                ssl_context=tls_context(self.node))
        except OSError as exc:
            raise ReceiverError(f"cannot listen on {self.node.host}:{self.node.port}: "
                                f"{exc.strerror or exc}") from exc
        log_event(LOGGER, "receiver.listening", ae_title=self.node.ae_title,
                  host=self.node.host, port=self.node.port, tls=self.node.tls.enabled)

    def busy(self) -> bool:
        """Whether an association is open (connections still negotiating do not count)."""
        server = self._server
        return server is not None and any(
            a.is_acceptor and a.is_established for a in server.ae.active_associations)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop accepting; give open associations ``grace`` seconds to end, then abort them.

        Returns once no C-STORE handler runs any more, so everything acknowledged is indexed.
        An instance cut off by the abort was not acknowledged; the sender resends it.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # no new associations; open ones go on in their threads
        open_associations = []
        for assoc in server.ae.active_associations:
            if not assoc.is_acceptor:
                continue
            if assoc.is_established:
                open_associations.append(assoc)
            else:
                # Connected but not associated (a port probe, a slow peer): nothing can have
                # been acknowledged, and pynetdicom cannot A-ABORT in that state. Close the
                # connection; the (daemon) thread then only waits out its ACSE timeout.
                _close_transport(assoc)
        deadline = time.monotonic() + grace
        for assoc in open_associations:
            assoc.join(max(0.0, deadline - time.monotonic()))
        for assoc in open_associations:
            if assoc.is_alive():
                assoc.abort()
                assoc.join(STOP_GRACE)

    # -- association policy and audit --------------------------------------------------------

    @staticmethod
    def _on_connection(event: evt.Event) -> None:
        # Answer each C-STORE at once: with Nagle's algorithm the small C-STORE-RSP can wait
        # for the sender's delayed ACK (tens of ms per instance).
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _refusal(self, calling: str, called: str, address: str) -> tuple[str, int] | None:
        """Why an association must be refused: (reason, A-ASSOCIATE-RJ diagnostic)."""
        if self._networks and not _in_networks(address, self._networks):
            return "host-not-allowed", 0x01  # no reason given: do not tell a stranger more
        allowed = self.node.allowed_calling_ae_titles
        if allowed and calling not in allowed:
            return "calling-ae-not-allowed", 0x03
        if self.node.require_called_ae_title and called != self.node.ae_title:
            return "called-ae-not-recognised", 0x07
        return None

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        request = assoc.requestor
        calling = request.primitive.calling_ae_title.strip()
        called = request.primitive.called_ae_title.strip()
        address, port = request.address, request.port
        refusal = self._refusal(calling, called, address)
        if refusal is None:
            return
        reason, diagnostic = refusal
        # Audited before the answer, so the row exists once the peer knows it was refused.
        self.index.open_association(calling_ae_title=calling, called_ae_title=called,
                                    address=address, port=port, tls=self.node.tls.enabled,
                                    outcome="rejected", reason=reason)
        assoc.acse.send_reject(0x01, 0x01, diagnostic)  # rejected-permanent, by the service user
        # As pynetdicom does for its own rejections: wait until the A-ASSOCIATE-RJ is on the
        # wire before the connection is closed, or the peer only sees an abort.
        assoc.kill()
        log_event(LOGGER, "association.rejected", logging.WARNING, reason=reason,
                  calling_ae_title=calling, called_ae_title=called, address=address)

    def _on_rejected(self, event: evt.Event) -> None:
        # Only pynetdicom's own refusal reaches here: too many concurrent associations.
        request = event.assoc.requestor
        self.index.open_association(
            calling_ae_title=request.primitive.calling_ae_title.strip(),
            called_ae_title=request.primitive.called_ae_title.strip(), address=request.address,
            port=request.port, tls=self.node.tls.enabled, outcome="rejected",
            reason="too-many-associations")
        log_event(LOGGER, "association.rejected", logging.WARNING,
                  reason="too-many-associations", address=request.address)

    def _on_accepted(self, event: evt.Event) -> None:
        request = event.assoc.requestor
        audit_id = self.index.open_association(
            calling_ae_title=request.ae_title.strip(), called_ae_title=self.node.ae_title,
            address=request.address, port=request.port, tls=self.node.tls.enabled)
        with self._audit_lock:
            self._audit_ids[event.assoc] = audit_id
        log_event(LOGGER, "association.accepted", association=audit_id,
                  calling_ae_title=request.ae_title.strip(), address=request.address)

    def _on_ended(self, event: evt.Event, outcome: str) -> None:
        with self._audit_lock:
            audit_id = self._audit_ids.pop(event.assoc, None)
        if audit_id is not None:
            self.index.close_association(audit_id, outcome)
            log_event(LOGGER, f"association.{outcome}", association=audit_id)

    # -- C-STORE -----------------------------------------------------------------------------

    def _refuse(self, audit_id: int | None, sop_uid: str | None, sop_class: str | None,
                kind: RejectKind, message: str, status: int,
                keep: list[bytes] | None = None) -> int:
        quarantine = self.spool.keep_rejected(keep) if keep else None
        try:
            self.index.add_rejection(association_id=audit_id, sop_instance_uid=sop_uid,
                                     sop_class_uid=sop_class, kind=kind.value, message=message,
                                     status=status, quarantine_path=quarantine)
        except SQLAlchemyError:
            LOGGER.exception("cannot record the rejection")
        log_event(LOGGER, "store.refused", logging.WARNING, association=audit_id,
                  sop_instance_uid=sop_uid, kind=kind.value, status=f"0x{status:04X}",
                  reason=message)
        return status

    def _on_store(self, event: evt.Event) -> int:
        started = time.perf_counter()
        audit_id = self._audit_ids.get(event.assoc)
        request = event.request
        sop_uid = str(request.AffectedSOPInstanceUID or "").strip()
        sop_class = str(request.AffectedSOPClassUID or "").strip()
        if not sop_uid:
            return self._refuse(audit_id, None, sop_class, RejectKind.MISSING_UID,
                                "the C-STORE request has no Affected SOP Instance UID",
                                STATUS_CANNOT_UNDERSTAND)
        free = self.spool.free_bytes()
        if free < self.storage.min_free:
            return self._refuse(audit_id, sop_uid, sop_class, RejectKind.DISK_RESERVE,
                                f"{free} bytes free on the spool, storage.min_free is "
                                f"{self.storage.min_free}", STATUS_DISK_RESERVE)
        if self.index.find_instance(sop_uid) is not None:
            self.index.count_duplicate(sop_uid, audit_id)
            log_event(LOGGER, "store.duplicate", association=audit_id, sop_instance_uid=sop_uid)
            return STATUS_SUCCESS

        encoded = event.encoded_dataset(include_meta=False)
        meta = event.file_meta
        calling = event.assoc.requestor.ae_title.strip()
        meta.SourceApplicationEntityTitle = calling
        header = BytesIO()
        header.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(header, meta, enforce_standard=True)
        chunks = [header.getvalue(), encoded]
        syntax = str(meta.TransferSyntaxUID)
        try:
            summary = inspect_dataset(encoded, syntax)
        except CorruptDataset as exc:
            return self._refuse(audit_id, sop_uid, sop_class, exc.kind, str(exc),
                                STATUS_CANNOT_UNDERSTAND, keep=chunks)

        study, series = describe_instance(summary, calling, sop_class)
        relative = self.spool.relative_path(study.study_instance_uid,
                                            series.series_instance_uid, sop_uid)
        try:
            size = self.spool.write(relative, chunks)
        except OSError as exc:
            return self._refuse(audit_id, sop_uid, sop_class, RejectKind.WRITE_FAILED,
                                f"cannot write {relative}: {exc.strerror or exc}",
                                STATUS_WRITE_FAILED)
        record = InstanceRecord(study, series, sop_uid, sop_class, syntax,
                                summary.text("InstanceNumber") or None, relative, size, audit_id)
        try:
            outcome = self.index.add_instance(record)
        except SQLAlchemyError as exc:
            return self._refuse(audit_id, sop_uid, sop_class, RejectKind.INDEX_FAILED,
                                f"cannot index the instance: {exc}", STATUS_INDEX_FAILED)
        if outcome.arm_timer:
            self.on_series_started(outcome)
        log_event(LOGGER, "store.accepted", logging.DEBUG, association=audit_id,
                  sop_instance_uid=sop_uid, series_instance_uid=series.series_instance_uid,
                  bytes=size, ms=round((time.perf_counter() - started) * 1000, 2))
        return STATUS_SUCCESS


def _close_transport(assoc: Association) -> None:
    """Close an association's TCP connection; its reactor then ends the association."""
    transport = assoc.dul.socket
    if transport is not None:
        transport.close()
