"""The DICOM listener: C-ECHO and C-STORE SCP on pynetdicom.

Association policy (checked when the A-ASSOCIATE-RQ arrives): the source address must be in
``node.allowed_hosts``, the Calling AE Title in ``node.allowed_calling_ae_titles`` (when these
lists are not empty) and the Called AE Title must be ours (``node.require_called_ae_title``).
pynetdicom enforces ``node.max_associations``. Every association gets an audit row.

C-STORE: an instance is answered 0x0000 only after it was checked completely
(:mod:`dicomnode.receiver.dataset`), its file is durable in the spool and its row is committed
in the index. Every refusal has a typed reason with its own status
(:class:`dicomnode.receiver.errors.RejectKind`), is recorded in the index and logged; no path
through the handler ends in pynetdicom's bare 0xC211.

A resend is a *duplicate* only when its content digest (SOP class, study, series, transfer
syntax, pixel bytes) equals the held copy's: it is acknowledged and counted, the first copy
stays. Anything else under a held SOP Instance UID is a *conflict*: its bytes are kept under
``spool/.conflicts/``, the held instance is untouched, and the sender gets 0xC010.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

from pydicom.filebase import DicomIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from converters.instance import frame_count
from dicomnode.config import NodeConfig, StorageConfig
from dicomnode.grouping import SeriesKey, instance_identity
from dicomnode.logs import log_event
from dicomnode.receiver.dataset import Command, inspect_dataset
from dicomnode.receiver.errors import AssociationEnd, CorruptDataset, ReceiverError, RejectKind
from dicomnode.receiver.slots import LocalSlots, Slots
from dicomnode.storage.spool import Spool
from dicomnode.store import IndexOutcome, InstanceIndex, InstanceRecord
from dicomnode.store.models import AssociationOutcome

LOGGER = logging.getLogger("dicomnode.receiver")

STATUS_SUCCESS = 0x0000

#: Seconds a graceful stop waits for open associations before aborting them.
STOP_GRACE = 5.0

#: Largest P-DATA PDU we accept; large PDUs mean fewer fragments to reassemble per instance.
MAX_PDU_SIZE = 4 * 1024 * 1024
#: Connections (negotiating or associated) pynetdicom may hold per association slot before it
#: refuses on its own: bare connections are closed after ``node.acse_timeout`` and never
#: count against ``node.max_associations``, but threads are not free.
CONNECTIONS_PER_SLOT = 8
#: Seconds between sweeps for associations that ended without any pynetdicom event.
REAP_INTERVAL = 1.0
#: Stripes of the per-SOP-Instance-UID lock (lookup, write and index of one UID are serial).
UID_LOCK_STRIPES = 64
#: A-ASSOCIATE-RJ (result, source, diagnostic) when every slot is taken: rejected-transient,
#: service-provider (presentation), local-limit-exceeded (PS3.8 9.3.4).
TOO_MANY = (0x02, 0x03, 0x02)

SeriesStarted = Callable[[IndexOutcome], None]


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


TLSFailure = Callable[[tuple[str, int], Exception], None]


class AuditedTLSContext:
    """The server's TLS context, so that a failed handshake is recorded: pynetdicom's server
    (socketserver) drops the error silently. The handshake runs in the accepting thread, so it
    gets ``node.acse_timeout`` seconds, not the listener's blocking default."""

    def __init__(self, context: ssl.SSLContext, timeout: float, on_failure: TLSFailure):
        self.context = context
        self.timeout = timeout
        self.on_failure = on_failure

    def wrap_socket(self, sock: socket.socket, server_side: bool = True) -> ssl.SSLSocket:
        try:
            peer = sock.getpeername()
        except OSError:
            peer = ("", 0)
        previous = sock.gettimeout()
        sock.settimeout(self.timeout)
        try:
            wrapped = self.context.wrap_socket(sock, server_side=server_side)
        except OSError as exc:  # ssl.SSLError, a timeout, a reset
            sock.close()
            self.on_failure((str(peer[0]), int(peer[1])), exc)
            raise
        wrapped.settimeout(previous)
        return wrapped


class SharedSocketServer(ThreadedAssociationServer):
    """pynetdicom's threaded server on a socket that is already bound and listening, shared
    by the node's receiver processes (:mod:`dicomnode.receiver.pool`)."""

    # Connection set-up threads hand over to an association thread at once; nothing to join.
    block_on_close = False

    def __init__(self, *args: Any, listening: socket.socket, **kwargs: Any):
        self._listening = listening
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self.socket is not None:
            self.socket.close()  # the one socketserver made for itself
        self.socket = self._listening
        # Every process selects on the socket and all wake for a connection; those that lose
        # the race to accept() must return to their loop, not block in accept().
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass  # listening already

    def server_close(self) -> None:
        # Not shutdown(): on a shared listening socket that ends accept() in every process.
        if self.socket is not None:
            self.socket.close()

    def shutdown(self) -> None:
        # pynetdicom's shutdown also removes the server from its AE's list of the servers
        # AE.start_server made; this one was made with AE.make_server.
        socketserver.BaseServer.shutdown(self)
        self.server_close()


class Receiver:
    """The C-ECHO/C-STORE SCP: association policy, spool writes, indexing, audit.

    ``slots`` counts associations against ``node.max_associations`` (shared memory when several
    receiver processes serve one port); by default this receiver's own count."""

    def __init__(self, node: NodeConfig, storage: StorageConfig, index: InstanceIndex,
                 spool: Spool, on_series_started: SeriesStarted, slots: Slots | None = None):
        self.node = node
        self.storage = storage
        self.index = index
        self.spool = spool
        self.on_series_started = on_series_started
        self.slots: Slots = slots if slots is not None else LocalSlots(node.max_associations)
        self._networks = [ipaddress.ip_network(h, strict=False) for h in node.allowed_hosts]
        self._audit_ids: dict[Association, int] = {}
        self._audit_lock = threading.Lock()
        #: Associations holding a slot (past EVT_REQUESTED, not yet ended).
        self._slots: set[Association] = set()
        #: Why the node itself aborts an association (read when it ends).
        self._abort_reasons: dict[Association, AssociationEnd] = {}
        #: Data-set bytes received so far of the message in flight, per association.
        self._inflight: dict[Association, int] = {}
        #: When each connection that has not yet sent its A-ASSOCIATE-RQ was opened.
        self._connected_at: dict[Association, float] = {}
        self._uid_locks = [threading.Lock() for _ in range(UID_LOCK_STRIPES)]
        self._server: Any = None
        self._reaper_stop = threading.Event()
        self._reaper: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def build_ae(self) -> AE:
        ae = AE(ae_title=self.node.ae_title)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None  # pynetdicom's pre-built contexts have one
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        # Called AE title is checked in _on_requested so the rejection is audited.
        ae.require_called_aet = False
        # node.max_associations is enforced in _on_requested, on associations only.
        ae.maximum_associations = self.node.max_associations * CONNECTIONS_PER_SLOT
        ae.network_timeout = self.node.network_timeout
        # As acceptor, pynetdicom waits acse_timeout for the A-ASSOCIATE-RQ (and for release).
        ae.acse_timeout = self.node.acse_timeout
        ae.dimse_timeout = self.node.network_timeout
        ae.maximum_pdu_size = MAX_PDU_SIZE
        return ae

    def start(self, listening: socket.socket | None = None) -> None:
        """Listen on ``node.host:node.port``, or accept on ``listening``, a socket bound and
        listening already (returns at once; associations get threads)."""
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_ended,
             [AssociationOutcome.RELEASED, AssociationEnd.RELEASED]),
            (evt.EVT_ABORTED, self._on_ended,
             [AssociationOutcome.ABORTED, AssociationEnd.ABORTED_BY_PEER]),
            (evt.EVT_CONN_CLOSE, self._on_ended,
             [AssociationOutcome.ABORTED, AssociationEnd.CONNECTION_CLOSED]),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_DIMSE_RECV, self._on_dimse),
            (evt.EVT_C_STORE, self._on_store),
        ]
        context = tls_context(self.node)
        audited = (AuditedTLSContext(context, self.node.acse_timeout, self._on_tls_failure)
                   if context is not None else None)
        address = (self.node.host, self.node.port)
        if listening is None:
            try:
                self._server = self.build_ae().start_server(
                    address, block=False, evt_handlers=handlers,
                    ssl_context=audited)  # type: ignore[arg-type]
            except OSError as exc:
                raise cannot_listen(self.node, exc) from exc
        else:
            server = self.build_ae().make_server(
                address, evt_handlers=handlers, ssl_context=audited,  # type: ignore[arg-type]
                server_class=SharedSocketServer, listening=listening)
            threading.Thread(target=server.serve_forever, name="receiver-accept",
                             daemon=True).start()
            self._server = server
        self._reaper_stop.clear()
        self._reaper = threading.Thread(target=self._reap, name="association-reaper",
                                        daemon=True)
        self._reaper.start()
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
        self._reaper_stop.set()
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
                self._abort_reasons[assoc] = AssociationEnd.NODE_STOPPING
                assoc.abort()
                assoc.join(STOP_GRACE)
        if self._reaper is not None:
            self._reaper.join(STOP_GRACE)
        self._reap_once(AssociationEnd.NODE_STOPPING)

    # -- association policy and audit --------------------------------------------------------

    def _on_connection(self, event: evt.Event) -> None:
        # Answer each C-STORE at once: with Nagle's algorithm the small C-STORE-RSP can wait
        # for the sender's delayed ACK (tens of ms per instance).
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._audit_lock:
            self._connected_at[event.assoc] = time.monotonic()

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
        primitive = request.primitive
        assert primitive is not None  # set from the A-ASSOCIATE-RQ before EVT_REQUESTED
        calling = primitive.calling_ae_title.strip()
        called = primitive.called_ae_title.strip()
        address, port = request.address, request.port
        with self._audit_lock:
            self._connected_at.pop(assoc, None)
        refusal = self._refusal(calling, called, address)
        answer = (0x01, 0x01)  # rejected-permanent, by the service user
        if refusal is None:
            if self.slots.take():
                with self._audit_lock:
                    self._slots.add(assoc)
                return
            refusal, answer = ("too-many-associations", TOO_MANY[2]), TOO_MANY[:2]
        reason, diagnostic = refusal
        # Audited before the answer, so the row exists once the peer knows it was refused.
        self.index.open_association(calling_ae_title=calling, called_ae_title=called,
                                    address=address, port=port, tls=self.node.tls.enabled,
                                    outcome=AssociationOutcome.REJECTED, reason=reason)
        assoc.acse.send_reject(answer[0], answer[1], diagnostic)
        # As pynetdicom does for its own rejections: wait until the A-ASSOCIATE-RJ is on the
        # wire before the connection is closed, or the peer only sees an abort.
        assoc.kill()
        log_event(LOGGER, "association.rejected", logging.WARNING, reason=reason,
                  calling_ae_title=calling, called_ae_title=called, address=address)

    def _on_rejected(self, event: evt.Event) -> None:
        # Only pynetdicom's own refusal reaches here: too many connections in all.
        request = event.assoc.requestor
        primitive = request.primitive
        assert primitive is not None  # the refused A-ASSOCIATE-RQ
        self.index.open_association(
            calling_ae_title=primitive.calling_ae_title.strip(),
            called_ae_title=primitive.called_ae_title.strip(), address=request.address,
            port=request.port, tls=self.node.tls.enabled, outcome=AssociationOutcome.REJECTED,
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
        for context in event.assoc.rejected_contexts:
            self._record_rejected_context(audit_id, context)

    def _record_rejected_context(self, audit_id: int, context: Any) -> None:
        """A presentation context we refused: not a storage SOP class (a DICOMDIR, a query
        model...) or no transfer syntax we know. The sender cannot use it; say why."""
        abstract = str(context.abstract_syntax)
        kind = (RejectKind.UNSUPPORTED_TRANSFER_SYNTAX if context.result == 0x04
                else RejectKind.UNSUPPORTED_SOP_CLASS)
        name = UID(abstract).name
        if kind is RejectKind.UNSUPPORTED_TRANSFER_SYNTAX:
            message = (f"presentation context for {name} refused: none of the transfer syntaxes "
                       f"{', '.join(map(str, context.transfer_syntax))} is supported")
        else:
            message = (f"presentation context for {name} ({abstract}) refused: not a SOP "
                       "class this node serves (C-ECHO and the current storage SOP classes)")
        self._record(audit_id, None, abstract, kind, message)

    def _on_ended(self, event: evt.Event, outcome: AssociationOutcome,
                  reason: AssociationEnd) -> None:
        self._end(event.assoc, outcome, reason)

    def _end(self, assoc: Association, outcome: AssociationOutcome, reason: AssociationEnd) -> None:
        if (reason is AssociationEnd.ABORTED_BY_PEER and getattr(assoc, "_sent_abort", False)
                and assoc.dul.idle_timer_expired()):
            reason = AssociationEnd.NETWORK_TIMEOUT  # pynetdicom's own abort, not the peer's
        with self._audit_lock:
            audit_id = self._audit_ids.pop(assoc, None)
            held_slot = assoc in self._slots
            self._slots.discard(assoc)
            self._inflight.pop(assoc, None)
            self._connected_at.pop(assoc, None)
            reason = self._abort_reasons.pop(assoc, reason)
        if held_slot:
            self.slots.give_back()
        if audit_id is not None:
            try:
                self.index.close_association(audit_id, outcome, reason.value)
            except SQLAlchemyError:
                LOGGER.exception("cannot close the association's audit row")
            log_event(LOGGER, f"association.{outcome}", association=audit_id,
                      reason=reason.value)

    def _reap(self) -> None:
        while not self._reaper_stop.wait(REAP_INTERVAL):
            self._reap_once(AssociationEnd.PROTOCOL_ERROR)

    def _reap_once(self, reason: AssociationEnd) -> None:
        """End the audit of associations whose thread is gone without a release or abort
        event (pynetdicom drops a connection on an invalid PDU without one), and close
        connections that sent no A-ASSOCIATE-RQ within ``node.acse_timeout``: pynetdicom only
        times that out between PDUs, not while it waits for the rest of a junk one."""
        now = time.monotonic()
        with self._audit_lock:
            dead = [a for a in (*self._audit_ids, *self._slots) if not a.is_alive()]
            stale = [a for a, opened in self._connected_at.items()
                     if not a.is_alive() or now - opened > self.node.acse_timeout]
            for assoc in stale:
                del self._connected_at[assoc]
        for assoc in stale:
            if assoc.is_alive() and not assoc.is_established:
                log_event(LOGGER, "connection.closed", reason="no-association-request",
                          address=assoc.requestor.address or None)
                _close_transport(assoc)
        for assoc in dead:
            self._end(assoc, AssociationOutcome.ABORTED, reason)

    def _on_dimse(self, event: evt.Event) -> None:
        """A C-STORE-RQ whose Affected SOP Instance UID is longer than 64 characters makes
        pynetdicom drop the association with no status (shorter bad UIDs reach the handler,
        which refuses them with one): record why."""
        command = event.message.command_set
        uid = str(command.get("AffectedSOPInstanceUID") or "").strip()
        if command.get("CommandField") != 0x0001 or len(uid) <= 64:
            return
        self._abort_reasons[event.assoc] = AssociationEnd.PROTOCOL_ERROR
        self._record(self._audit_ids.get(event.assoc), None,
                     str(command.get("AffectedSOPClassUID") or "") or None,
                     RejectKind.INVALID_UID,
                     f"Affected SOP Instance UID {uid[:80]!r} ({len(uid)} characters) is not a "
                     "valid UID (at most 64: PS3.5 9.1); pynetdicom cannot decode such a "
                     "command, so the association is aborted without a status")

    def _on_tls_failure(self, peer: tuple[str, int], exc: Exception) -> None:
        detail = f"{type(exc).__name__}: {exc}"
        try:
            self.index.open_association(calling_ae_title="", called_ae_title="",
                                        address=peer[0], port=peer[1], tls=True,
                                        outcome=AssociationOutcome.REJECTED,
                                        reason="tls-handshake-failed", detail=detail[:2000])
        except SQLAlchemyError:
            LOGGER.exception("cannot record the TLS handshake failure")
        log_event(LOGGER, "association.tls_failed", logging.WARNING, address=peer[0],
                  port=peer[1], reason=detail)

    def _on_pdu(self, event: evt.Event) -> None:
        """Bound the data set being received: abort once it exceeds storage.max_instance_size
        (pynetdicom assembles a whole message in memory before the C-STORE handler runs)."""
        pdu = event.pdu
        if not isinstance(pdu, P_DATA_TF):
            return
        assoc = event.assoc
        for item in pdu.presentation_data_value_items:
            data = item.presentation_data_value
            if not data or data[0] & 0x01:  # a command fragment
                continue
            total = self._inflight.get(assoc, 0) + len(data) - 1
            if data[0] & 0x02:  # the data set's last fragment: the handler takes it from here
                self._inflight.pop(assoc, None)
            else:
                self._inflight[assoc] = total
            if total > self.storage.max_instance_size:
                self._inflight.pop(assoc, None)
                self._record(self._audit_ids.get(assoc), None, None, RejectKind.TOO_LARGE,
                             f"more than {self.storage.max_instance_size} bytes of one data set "
                             "received (storage.max_instance_size): association aborted")
                self._abort_from_reactor(assoc)
                return

    def _abort_from_reactor(self, assoc: Association) -> None:
        """A-ABORT from inside the association's own reactor thread (Association.abort()
        would wait for that thread): send the PDU, then drop the connection."""
        self._abort_reasons[assoc] = AssociationEnd.INSTANCE_TOO_LARGE
        transport = assoc.dul.socket
        if transport is None:
            return
        abort = A_ABORT_RQ()
        abort.source, abort.reason_diagnostic = 0x02, 0x00
        try:
            transport.send(abort.encode())
        except OSError:
            pass
        transport.close()

    # -- C-STORE -----------------------------------------------------------------------------

    def _record(self, audit_id: int | None, sop_uid: str | None, sop_class: str | None,
                kind: RejectKind, message: str, kept: str | None = None) -> int:
        """Record and log a refusal; return its status."""
        try:
            self.index.add_rejection(association_id=audit_id, sop_instance_uid=sop_uid,
                                     sop_class_uid=sop_class, kind=kind.value, message=message,
                                     status=kind.status, quarantine_path=kept)
        except SQLAlchemyError:
            LOGGER.exception("cannot record the rejection")
        log_event(LOGGER, "store.refused", logging.WARNING, association=audit_id,
                  sop_instance_uid=sop_uid, kind=kind.value, status=f"0x{kind.status:04X}",
                  reason=message, kept=kept)
        return kind.status

    def _refuse(self, audit_id: int | None, sop_uid: str | None, sop_class: str | None,
                kind: RejectKind, message: str, keep: list[bytes] | None = None) -> int:
        """Refuse an instance; its bytes go to the (bounded) quarantine when given."""
        kept = self.spool.keep_rejected(keep) if keep else None
        return self._record(audit_id, sop_uid, sop_class, kind, message, kept)

    def _on_store(self, event: evt.Event) -> int:
        try:
            return self._store(event)
        except Exception as exc:  # noqa: BLE001 - never pynetdicom's bare 0xC211
            LOGGER.exception("C-STORE handler failed")
            request = cast(C_STORE, event.request)  # EVT_C_STORE: as pynetdicom itself casts it
            try:
                chunks: list[bytes] | None = [event.encoded_dataset(include_meta=False)]
            except Exception:  # noqa: BLE001 - keep what can be kept
                chunks = None
            return self._refuse(self._audit_ids.get(event.assoc),
                                str(request.AffectedSOPInstanceUID or "") or None,
                                str(request.AffectedSOPClassUID or "") or None,
                                RejectKind.INTERNAL, f"{type(exc).__name__}: {exc}", keep=chunks)

    def _store(self, event: evt.Event) -> int:
        started = time.perf_counter()
        audit_id = self._audit_ids.get(event.assoc)
        request = cast(C_STORE, event.request)  # EVT_C_STORE: as pynetdicom itself casts it
        sop_uid = str(request.AffectedSOPInstanceUID or "").strip()
        sop_class = str(request.AffectedSOPClassUID or "").strip()
        if not sop_uid:
            return self._refuse(audit_id, None, sop_class, RejectKind.MISSING_UID,
                                "the C-STORE request has no Affected SOP Instance UID")
        free = self.spool.free_bytes()
        if free < self.storage.min_free:
            return self._refuse(audit_id, sop_uid, sop_class, RejectKind.DISK_RESERVE,
                                f"{free} bytes free on the spool, storage.min_free is "
                                f"{self.storage.min_free}")

        encoded = event.encoded_dataset(include_meta=False)
        meta = event.file_meta
        calling = event.assoc.requestor.ae_title.strip()
        meta.SourceApplicationEntityTitle = calling
        header = BytesIO()
        header.write(b"\x00" * 128 + b"DICM")
        # pydicom annotates fp as DicomIO but only calls fp.write().
        write_file_meta_info(cast(DicomIO, header), meta, enforce_standard=True)
        chunks = [header.getvalue(), encoded]
        syntax = str(meta.TransferSyntaxUID)
        try:
            summary = inspect_dataset(encoded, syntax, Command(sop_uid, sop_class),
                                      max_size=self.storage.max_instance_size,
                                      uid_policy=self.node.uid_validation)
        except CorruptDataset as exc:
            # A bomb's bytes are not worth keeping (and may not fit the quarantine).
            keep = None if exc.kind is RejectKind.TOO_LARGE else chunks
            return self._refuse(audit_id, sop_uid, sop_class, exc.kind, str(exc), keep=keep)
        if summary.lenient_uids:
            log_event(LOGGER, "store.uid_lenient", logging.WARNING, association=audit_id,
                      sop_instance_uid=sop_uid, uids=list(summary.lenient_uids))

        study, series = instance_identity(summary.attributes, calling, sop_class,
                                          summary.has_pixels)
        digest = summary.content_digest(syntax)
        with self._uid_locks[hash(sop_uid) % UID_LOCK_STRIPES]:
            held = self.index.find_instance(sop_uid)
            if held is not None:
                return self._resent(audit_id, sop_uid, sop_class, series, held.content_digest,
                                    digest, chunks)
            relative = self.spool.relative_path(study.study_instance_uid,
                                                series.series_instance_uid, sop_uid)
            try:
                size = self.spool.write(relative, chunks)
            except OSError as exc:
                return self._refuse(audit_id, sop_uid, sop_class, RejectKind.WRITE_FAILED,
                                    f"cannot write {relative}: {exc.strerror or exc}")
            record = InstanceRecord(study, series, sop_uid, sop_class, syntax,
                                    summary.text("InstanceNumber") or None, relative, size,
                                    audit_id, digest, frame_count(summary.attributes))
            try:
                outcome = self.index.add_instance(record)
            except SQLAlchemyError as exc:
                return self._refuse(audit_id, sop_uid, sop_class, RejectKind.INDEX_FAILED,
                                    f"cannot index the instance: {exc}")
        if not outcome.inserted:
            return self._resent(audit_id, sop_uid, sop_class, series, outcome.held_digest,
                                digest, chunks)
        if outcome.arm_timer:
            self.on_series_started(outcome)
        log_event(LOGGER, "store.accepted", logging.DEBUG, association=audit_id,
                  sop_instance_uid=sop_uid, series_instance_uid=series.series_instance_uid,
                  bytes=size, ms=round((time.perf_counter() - started) * 1000, 2))
        return STATUS_SUCCESS

    def _resent(self, audit_id: int | None, sop_uid: str, sop_class: str, series: SeriesKey,
                held_digest: str | None, digest: str, chunks: list[bytes]) -> int:
        """An instance under a SOP Instance UID already held: a duplicate (same content,
        acknowledged and counted) or a conflict (kept aside, refused)."""
        if held_digest is None or held_digest == digest:  # NULL: indexed by an older version
            self.index.count_duplicate(sop_uid, audit_id)
            log_event(LOGGER, "store.duplicate", association=audit_id, sop_instance_uid=sop_uid)
            return STATUS_SUCCESS
        try:
            kept = self.spool.keep_conflict(sop_uid, digest, chunks)
        except OSError as exc:
            return self._refuse(audit_id, sop_uid, sop_class, RejectKind.WRITE_FAILED,
                                f"cannot keep a conflicting object: {exc.strerror or exc}")
        return self._record(audit_id, sop_uid, sop_class, RejectKind.UID_CONFLICT,
                            f"a different object (SOP class {sop_class}, series "
                            f"{series.series_instance_uid}) under the SOP Instance UID of an "
                            f"instance already held; the held one is unchanged, this one is "
                            f"kept at spool/{kept}", kept)


def cannot_listen(node: NodeConfig, exc: OSError) -> ReceiverError:
    """The error ``serve`` stops with when it cannot listen on its port."""
    return ReceiverError(f"cannot listen on {node.host}:{node.port}: {exc.strerror or exc}")


def _close_transport(assoc: Association) -> None:
    """Close an association's TCP connection; its reactor then ends the association."""
    transport = assoc.dul.socket
    if transport is not None:
        transport.close()
