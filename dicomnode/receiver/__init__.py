"""The DICOM listener (C-ECHO, C-STORE SCP): validates each data set, writes it to the
spool (``dicomnode.storage``) and indexes it (``dicomnode.store``) before answering."""

from dicomnode.receiver.errors import CorruptDataset, ReceiverError, RejectKind
from dicomnode.receiver.pool import ReceiverPool, open_spool
from dicomnode.receiver.scp import Receiver

__all__ = ["CorruptDataset", "Receiver", "ReceiverError", "ReceiverPool", "RejectKind",
           "open_spool"]
