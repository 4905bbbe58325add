"""The lock one running node holds on its storage folder."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class StorageLockedError(Exception):
    """Another process holds the storage lock."""


class StorageLock:
    """An exclusive lock on ``storage.path``, held for the node's whole life, so a second
    ``serve`` on the same storage stops before it touches the spool or the database (start-up
    recovery would otherwise cut off the first node's associations). The kernel releases it
    when the process dies, even by ``kill -9``."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StorageLockedError(
                f"another dicomnode (pid {holder}) is running on storage.path "
                f"{self.path.parent.resolve()}; stop it first or give this one its own "
                "storage.path") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
