"""The spool: received instances as DICOM files, laid out ``<study>/<series>/<sop>.dcm``.

A file is first written under ``.incoming/`` (never inside a series folder), flushed to disk,
then renamed into place and its folder synced, so a series folder only ever holds complete
files, even after a crash or power cut. Leftovers in ``.incoming/`` after a crash were never
acknowledged and are removed at start-up.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dicomnode.storage.durable import free_bytes, fsync_path
from dicomnode.storage.layout import CONFLICTS, INCOMING, QUARANTINE


@dataclass(frozen=True)
class QuarantineLimits:
    """``storage.quarantine_max`` bytes and ``storage.quarantine_days``."""

    max_bytes: int
    max_age_seconds: float


_SAFE_UID = re.compile(r"^[0-9.]{1,64}$")


def safe_name(uid: str) -> str:
    """A UID as a file name; anything that is not a plain UID is hashed (never a path)."""
    if _SAFE_UID.match(uid) and uid not in (".", ".."):
        return uid
    return "x" + hashlib.sha256(uid.encode()).hexdigest()[:32]


class Spool:
    """Durable file storage of received instances under one root folder."""

    def __init__(self, root: Path, *, fsync: bool = True,
                 quarantine_limits: QuarantineLimits | None = None):
        self.root = root
        self.fsync = fsync
        self.incoming = root / INCOMING
        self.quarantine = root / QUARANTINE
        self.conflicts = root / CONFLICTS
        self.quarantine_limits = quarantine_limits or QuarantineLimits(1024**3, 30 * 86400)
        self._quarantine_lock = threading.Lock()
        #: Quarantined files, oldest first: (mtime, size, path); read again under the lock.
        self._quarantined: list[tuple[float, int, Path]] = []
        # Folders known to exist and be durable; avoids a mkdir + sync per instance.
        self._known_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()

    def prepare(self) -> int:
        """Create the folders and drop partial files left by a crash; return how many."""
        for folder in (self.root, self.incoming, self.quarantine, self.conflicts):
            folder.mkdir(parents=True, exist_ok=True)
        removed = 0
        for leftover in self.incoming.iterdir():
            leftover.unlink(missing_ok=True)
            removed += 1
        with self._quarantine_locked():
            self._trim_quarantine(0)
        return removed

    @contextmanager
    def _quarantine_locked(self) -> Iterator[None]:
        """Hold the quarantine, against this process's threads and the other receiver
        processes writing into the same folder (an flock on the folder), and know its files:
        each process adding under limits it counted alone would together exceed them."""
        with self._quarantine_lock:
            fd = os.open(self.quarantine, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                entries = []
                with os.scandir(self.quarantine) as found:
                    for entry in found:
                        try:
                            stat = entry.stat()
                        except OSError:
                            continue
                        entries.append((stat.st_mtime, stat.st_size, Path(entry.path)))
                self._quarantined = sorted(entries)
                yield
            finally:
                os.close(fd)  # releases the flock

    def free_bytes(self) -> int:
        """Free space on the spool's file system, in bytes."""
        return free_bytes(self.root)

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """Where an instance lives, relative to the spool root."""
        return f"{safe_name(study_uid)}/{safe_name(series_uid)}/{safe_name(sop_uid)}.dcm"

    def write(self, relative: str, chunks: list[bytes]) -> int:
        """Write ``chunks`` durably at ``relative``; return the size in bytes.

        Raises OSError when the file cannot be written; nothing is left in the series folder.
        """
        target = self.root / relative
        temporary = self.incoming / f"{uuid.uuid4().hex}.part"
        size = 0
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                    size += written
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        os.close(fd)
        try:
            self._ensure_dir(target.parent)
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        if self.fsync:
            fsync_path(target.parent)  # makes the rename itself durable
        return size

    def _ensure_dir(self, folder: Path) -> None:
        if folder in self._known_dirs:
            return
        with self._dirs_lock:
            missing = []
            current = folder
            while current != self.root and not current.exists():
                missing.append(current)
                current = current.parent
            for path in reversed(missing):
                path.mkdir(exist_ok=True)
                if self.fsync:
                    fsync_path(path.parent)
            self._known_dirs.add(folder)

    def keep_rejected(self, chunks: list[bytes]) -> str | None:
        """Keep a refused data set under ``.quarantine/`` (best effort, not synced), within
        the quarantine limits: older files go first; one larger than the limit is not kept.
        Returns the path relative to the spool, or None when nothing was kept."""
        size = sum(len(chunk) for chunk in chunks)
        if size > self.quarantine_limits.max_bytes:
            return None
        # Named by time first: files of one clock tick (mtimes are that coarse) sort in order.
        path = self.quarantine / f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.dcm"
        try:
            with self._quarantine_locked():
                self._trim_quarantine(size)
                try:
                    with open(path, "wb") as handle:
                        for chunk in chunks:
                            handle.write(chunk)
                except OSError:
                    path.unlink(missing_ok=True)
                    return None
                self._quarantined.append((time.time(), size, path))
        except OSError:  # the folder itself is gone or unreadable: keep nothing
            return None
        return f"{QUARANTINE}/{path.name}"

    def quarantine_usage(self) -> tuple[int, int]:
        """(files, bytes) held in the quarantine."""
        with self._quarantine_locked():
            return len(self._quarantined), sum(size for _, size, _ in self._quarantined)

    def _trim_quarantine(self, room: int) -> None:
        """Drop expired files, then the oldest until ``room`` more bytes fit (lock held)."""
        limits = self.quarantine_limits
        cutoff = time.time() - limits.max_age_seconds
        total = sum(size for _, size, _ in self._quarantined)
        while self._quarantined and (self._quarantined[0][0] < cutoff
                                     or total + room > limits.max_bytes):
            _, size, path = self._quarantined.pop(0)
            path.unlink(missing_ok=True)
            total -= size

    def instance_files(self) -> list[str]:
        """Relative paths of every instance file: ``<study>/<series>/<sop>.dcm``."""
        root = self.root
        return [f"{study.name}/{series.name}/{item.name}"
                for study in root.iterdir() if study.is_dir() and not study.name.startswith(".")
                for series in study.iterdir() if series.is_dir()
                for item in series.iterdir() if item.suffix == ".dcm"]

    def keep_conflict(self, sop_uid: str, digest: str, chunks: list[bytes]) -> str:
        """Keep, durably and never purged automatically, an object that differs from the one
        held under its SOP Instance UID, as ``.conflicts/<sop>.<digest>.dcm``; the same object
        sent again lands on the same file. Raises OSError."""
        relative = f"{CONFLICTS}/{safe_name(sop_uid)}.{digest[:32]}.dcm"
        if not (self.root / relative).exists():
            self.write(relative, chunks)
        return relative
