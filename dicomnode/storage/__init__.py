"""The node's files on disk: where each kind of file lives and how it is written durably.

``layout`` names every folder and file under ``storage.path`` (one owner for the layout),
``durable`` the fsync and atomic-rename helpers, ``spool`` the received instances, ``results``
each job's output folder and ``lock`` the lock one running node holds.
"""

from dicomnode.storage.durable import free_bytes, fsync_folder, fsync_path
from dicomnode.storage.layout import StorageLayout
from dicomnode.storage.lock import StorageLock, StorageLockedError
from dicomnode.storage.results import ResultsStore
from dicomnode.storage.spool import QuarantineLimits, Spool

__all__ = ["QuarantineLimits", "ResultsStore", "Spool", "StorageLayout", "StorageLock",
           "StorageLockedError", "free_bytes", "fsync_folder", "fsync_path"]
