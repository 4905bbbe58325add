"""Why the receiver refuses an association or an instance, as typed errors and reasons.

Each :class:`RejectKind` has one DIMSE status (PS3.4 Annex B.2.3 ranges): ``A7xx`` "Refused:
Out of Resources" for what a sender should try again later, ``A900`` "Data Set does not match
SOP Class", ``Cxxx`` "Cannot Understand" for data sets that will never be accepted as sent
(senders do not retry these). ``0122`` (SOP Class not supported) and ``0x0000`` are only
written into the record for refusals made at association negotiation, which no C-STORE status
answers.
"""

from __future__ import annotations

from enum import Enum


class RejectKind(str, Enum):
    """Typed reason of a refused C-STORE, stored in ``rejections.kind`` and shown by status."""

    #: The data set ends before an element, item or sequence it announces (cut-off transfer).
    TRUNCATED = "truncated-dataset"
    #: The bytes are not a well-formed data set (wrong structure, bad deflate stream, a value
    #: that cannot be decoded...).
    MALFORMED = "malformed-dataset"
    #: An explicit VR that is not a DICOM VR.
    INVALID_VR = "invalid-vr"
    #: A value length that its VR does not allow (odd, not a multiple of the value size...).
    INVALID_LENGTH = "invalid-value-length"
    #: The request or the data set lacks a SOP Instance UID to file the instance under.
    MISSING_UID = "missing-sop-instance-uid"
    #: (0008,0018) differs from the command's Affected SOP Instance UID.
    UID_MISMATCH = "sop-instance-uid-mismatch"
    #: (0008,0016) differs from the command's Affected SOP Class UID.
    SOP_CLASS_MISMATCH = "sop-class-mismatch"
    #: A Part-10 preamble or File Meta Information (group 0002) inside the data set.
    PART10_IN_DATASET = "file-meta-in-dataset"
    #: A SOP Instance, SOP Class, Study or Series UID that is not a valid UID (PS3.5 9.1).
    INVALID_UID = "invalid-uid"
    #: Native Pixel Data whose length is not what the Image Pixel module announces, or whose
    #: announcing attributes are missing.
    PIXEL_DATA = "pixel-data-length"
    #: The data set (inflated, for Deflated Explicit VR) exceeds ``storage.max_instance_size``.
    TOO_LARGE = "instance-too-large"
    #: A different object under the SOP Instance UID of one already held (see the README).
    UID_CONFLICT = "uid-conflict"
    #: A DICOMDIR (Media Storage Directory: group 0004, no SOP Instance UID of its own) sent
    #: as if it were an image, as storescu does with the UID it finds in a record. Answered
    #: with a warning so a sender goes on with the images; kept in the quarantine.
    MEDIA_DIRECTORY = "media-storage-directory"
    #: A presentation context proposed an abstract syntax that is not a storage SOP class
    #: (Media Storage Directory, C-FIND/C-MOVE/C-GET models...): refused at negotiation.
    UNSUPPORTED_SOP_CLASS = "unsupported-sop-class"
    #: A presentation context proposed only transfer syntaxes the node does not know.
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported-transfer-syntax"
    #: Free disk space is below ``storage.min_free``.
    DISK_RESERVE = "disk-below-reserve"
    #: Writing or syncing the spool file failed (I/O error, permissions, disk full).
    WRITE_FAILED = "spool-write-failed"
    #: The database refused the index row.
    INDEX_FAILED = "index-failed"
    #: The handler itself failed (a bug): traceback in the log, bytes in the quarantine.
    INTERNAL = "internal-error"

    @property
    def status(self) -> int:
        """The DIMSE status a sender gets for this refusal."""
        return STATUS[self]


STATUS: dict[RejectKind, int] = {
    RejectKind.TRUNCATED: 0xC000,
    RejectKind.MALFORMED: 0xC001,
    RejectKind.INVALID_VR: 0xC002,
    RejectKind.INVALID_LENGTH: 0xC003,
    RejectKind.MISSING_UID: 0xC004,
    RejectKind.UID_MISMATCH: 0xC005,
    RejectKind.PART10_IN_DATASET: 0xC006,
    RejectKind.INVALID_UID: 0xC007,
    RejectKind.PIXEL_DATA: 0xC008,
    RejectKind.UID_CONFLICT: 0xC010,
    RejectKind.SOP_CLASS_MISMATCH: 0xA900,
    RejectKind.MEDIA_DIRECTORY: 0xB007,
    RejectKind.DISK_RESERVE: 0xA700,
    RejectKind.WRITE_FAILED: 0xA701,
    RejectKind.INDEX_FAILED: 0xA702,
    RejectKind.TOO_LARGE: 0xA703,
    RejectKind.INTERNAL: 0xA7FF,
    RejectKind.UNSUPPORTED_SOP_CLASS: 0x0122,
    RejectKind.UNSUPPORTED_TRANSFER_SYNTAX: 0x0122,
}


class AssociationEnd(str, Enum):
    """Why an association row ended (``associations.reason``), next to its outcome."""

    RELEASED = "released-by-peer"
    ABORTED_BY_PEER = "aborted-by-peer"
    CONNECTION_CLOSED = "connection-closed"
    #: The association thread ended without A-RELEASE or A-ABORT: an invalid PDU, a DIMSE
    #: message pynetdicom could not decode, or a timeout.
    PROTOCOL_ERROR = "protocol-error"
    #: The node aborted it after ``node.network_timeout`` seconds of silence.
    NETWORK_TIMEOUT = "network-timeout"
    #: The node aborted it: a data set larger than ``storage.max_instance_size``.
    INSTANCE_TOO_LARGE = "instance-too-large"
    NODE_STOPPING = "node-stopping"
    NODE_RESTARTED = "node-restarted"


class ReceiverError(Exception):
    """The DICOM listener cannot start or run (port in use, bad TLS files...)."""


class CorruptDataset(Exception):
    """A received data set cannot be stored as a good instance."""

    def __init__(self, kind: RejectKind, message: str):
        self.kind = kind
        super().__init__(message)
