"""Delivery of result objects to one destination: C-STORE SCU or DICOMweb STOW-RS.

One association (or one STOW-RS request) per job, not per file. A delivery either stores every
object or raises :class:`DeliveryError` naming what failed; the caller (the job's dispatch
stage) decides about retries, so nothing here sleeps or loops.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.association import Association

# pynetdicom creates its SOP class objects at import time (sop_class._generate_sop_classes),
# so mypy sees no Verification attribute.
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.config import DestinationConfig, TLSConfig

#: Warning statuses of C-STORE (PS3.4 B.2.3) still mean the object was stored.
_WARNING_STATUSES = {0xB000, 0xB007, 0xB006}


class DeliveryError(Exception):
    """A delivery did not store every object.

    ``reason`` is a short machine-readable kind (``unreachable``, ``rejected``, ``aborted``,
    ``refused_objects``, ``http_error``) shown in ``dicomnode status``; the message is for people.
    """

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


@dataclass
class DeliveryReport:
    """What the destination acknowledged: SOP Instance UIDs stored (warnings included)."""

    destination: str
    stored: list[str] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)


def _tls_args(tls: TLSConfig, host: str) -> tuple[ssl.SSLContext, str] | None:
    if not tls.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=str(tls.ca_certificates) if tls.ca_certificates
                                         else None)
    if tls.certificate and tls.private_key:  # our client certificate, when the peer asks for one
        context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    return context, host


def _contexts(datasets: Sequence[Dataset]) -> dict[str, list[str]]:
    """Transfer syntaxes to propose per SOP class: exactly those the objects are encoded in.

    Objects are sent as encoded (no transcoding); a peer that accepts none of an object's
    syntaxes gets a clear ``rejected`` error rather than a silently re-encoded object.
    """
    wanted: dict[str, list[str]] = {}
    for ds in datasets:
        syntaxes = wanted.setdefault(str(ds.SOPClassUID), [])
        syntax = str(ds.file_meta.TransferSyntaxUID)
        if syntax not in syntaxes:
            syntaxes.append(syntax)
    if len(wanted) > 128:  # PS3.8: at most 128 presentation contexts per association
        raise DeliveryError("rejected", "more than 128 SOP classes in one delivery")
    return wanted


def _associate(ae: AE, destination: DestinationConfig) -> Association:
    """Request the association; ask once more when the peer dropped the request at once.

    A peer that rejects (A-ASSOCIATE-RJ) and closes its socket straight away can reach
    pynetdicom as a closed connection before the RJ is read (seen twice in CI with Orthanc
    and a wrong called AE title on a loaded machine): the association then looks aborted, and
    a permanent rejection would be retried as ``unreachable`` for hours. A second request
    gets the peer's real answer; a peer that drops it again is unreachable."""
    assert destination.host and destination.port and destination.ae_title
    tls = _tls_args(destination.tls, destination.host)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         tls_args=tls)
    if not assoc.is_established and not assoc.is_rejected and assoc.is_aborted:
        assoc = ae.associate(destination.host, destination.port,
                             ae_title=destination.ae_title, tls_args=tls)
    return assoc


def send_dicom(name: str, destination: DestinationConfig, datasets: Sequence[Dataset], *,
               calling_ae_title: str, timeout: float = 30.0) -> DeliveryReport:
    """C-STORE every dataset over one association to a DICOM destination."""
    assert destination.host and destination.port and destination.ae_title
    ae = AE(ae_title=destination.calling_ae_title or calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for sop_class, syntaxes in _contexts(datasets).items():
        ae.add_requested_context(sop_class, syntaxes)
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    assoc = _associate(ae, destination)
    if assoc.is_rejected:
        raise DeliveryError("rejected", f"{where} rejected the association")
    if not assoc.is_established:
        # Say which: a peer that aborts the request differs from one nobody answers for.
        how = ("the peer aborted the request" if assoc.is_aborted
               else "connection refused or no answer within the timeout")
        raise DeliveryError("unreachable", f"cannot associate with {where} ({how})")
    report = DeliveryReport(destination=name)
    failures: list[str] = []
    try:
        accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
        for ds in datasets:
            if (ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) not in accepted:
                failures.append(f"{ds.SOPInstanceUID} (peer accepts no context for SOP class "
                                f"{ds.SOPClassUID} in {ds.file_meta.TransferSyntaxUID.name})")
                continue
            status = assoc.send_c_store(ds)
            if not status:  # no response: the association was aborted or timed out
                raise DeliveryError("aborted", f"{where} stopped answering during C-STORE of "
                                               f"{ds.SOPInstanceUID}")
            code = int(status.Status)
            if code == 0x0000 or code in _WARNING_STATUSES:
                report.stored.append(str(ds.SOPInstanceUID))
                if code:
                    report.warnings[str(ds.SOPInstanceUID)] = code
            else:
                failures.append(f"{ds.SOPInstanceUID} (status 0x{code:04X})")
    finally:
        if assoc.is_established:
            assoc.release()
    if failures:
        raise DeliveryError("refused_objects",
                            f"{where} refused {len(failures)} of {len(datasets)} objects: "
                            + ", ".join(failures[:5]))
    return report


def send_dicomweb(name: str, destination: DestinationConfig, datasets: Sequence[Dataset], *,
                  timeout: float = 60.0) -> DeliveryReport:
    """STOW-RS every dataset in one multipart request to a DICOMweb destination."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if destination.username:
        session.auth = (destination.username, destination.password or "")
    client = DICOMwebClient(url=str(destination.url), session=session, timeout=timeout)
    client.set_http_retry_params(retry=False)  # retries are ours: persisted, with back-off
    try:
        response = client.store_instances(list(datasets))
    except requests.ConnectionError as exc:
        raise DeliveryError("unreachable", f"cannot reach {destination.url}: {exc}") from None
    except requests.HTTPError as exc:
        raise DeliveryError("http_error", f"{destination.url} answered {exc}") from None
    failed = response.get("FailedSOPSequence", [])
    if failed:
        uids = [str(item.get("ReferencedSOPInstanceUID", "?")) for item in failed]
        raise DeliveryError("refused_objects",
                            f"{destination.url} refused {len(uids)} objects: {', '.join(uids[:5])}")
    return DeliveryReport(destination=name, stored=[str(ds.SOPInstanceUID) for ds in datasets])


def deliver(name: str, destination: DestinationConfig, datasets: Sequence[Dataset], *,
            calling_ae_title: str) -> DeliveryReport:
    """Send to a destination of either kind."""
    if destination.type == "dicomweb":
        return send_dicomweb(name, destination, datasets)
    return send_dicom(name, destination, datasets, calling_ae_title=calling_ae_title)


def echo(destination: DestinationConfig, *, calling_ae_title: str,
         timeout: float = 10.0) -> tuple[bool, str]:
    """C-ECHO a DICOM destination: (reachable, detail). DICOMweb destinations are not echoed."""
    if destination.type != "dicom":
        return True, "not a DICOM destination"
    assert destination.host and destination.port and destination.ae_title
    ae = AE(ae_title=destination.calling_ae_title or calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         tls_args=_tls_args(destination.tls, destination.host))
    if not assoc.is_established:
        return False, "association rejected" if assoc.is_rejected else "unreachable"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status and int(status.Status) == 0:
        return True, "C-ECHO ok"
    return False, "C-ECHO failed"
