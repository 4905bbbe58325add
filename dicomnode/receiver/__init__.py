"""The DICOM listener (C-ECHO, C-STORE SCP) and the durable spool it writes to."""

from dicomnode.receiver.errors import CorruptDataset, ReceiverError, RejectKind
from dicomnode.receiver.scp import Receiver
from dicomnode.receiver.spool import Spool

__all__ = ["CorruptDataset", "Receiver", "ReceiverError", "RejectKind", "Spool"]
