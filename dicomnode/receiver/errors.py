"""Why the receiver refuses an association or an instance, as typed errors and reasons."""

from __future__ import annotations

from enum import Enum


class RejectKind(str, Enum):
    """Typed reason of a refused C-STORE, stored in ``rejections.kind`` and shown by status."""

    #: The data set ends before an element, item or sequence it announces (cut-off transfer).
    TRUNCATED = "truncated-dataset"
    #: The bytes are not a well-formed data set (wrong structure, bad deflate stream...).
    MALFORMED = "malformed-dataset"
    #: The request lacks a SOP Instance UID to file the instance under.
    MISSING_UID = "missing-sop-instance-uid"
    #: Free disk space is below ``storage.min_free``.
    DISK_RESERVE = "disk-below-reserve"
    #: Writing or syncing the spool file failed (I/O error, permissions, disk full).
    WRITE_FAILED = "spool-write-failed"
    #: The database refused the index row.
    INDEX_FAILED = "index-failed"


class ReceiverError(Exception):
    """The DICOM listener cannot start or run (port in use, bad TLS files...)."""


class CorruptDataset(Exception):
    """A received data set cannot be stored as a good instance."""

    def __init__(self, kind: RejectKind, message: str):
        self.kind = kind
        super().__init__(message)
