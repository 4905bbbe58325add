"""Where everything lives under ``storage.path`` (the one place that spells the layout)::

    <storage.path>/
        dicomnode.lock          held by the running node (StorageLock)
        dicomnode.sqlite3       the index, when storage.database_url is empty
        spool/                  received instances: <study>/<series>/<sop>.dcm
            .clean-shutdown     written on a clean stop: start-up skips the re-index scan
            .incoming/          files being written (removed at start-up)
            .quarantine/        refused data sets, bounded by size and age
            .conflicts/         different objects sent under a held SOP Instance UID
        jobs/<id:08d>/          one job's results (SEG, SR, preview, labels.nii.gz, result.json)
        jobs/<id:08d>.partial/  results being written (renamed into place when complete)
        viewer/                 the local Orthanc + OHIF stack (dicomnode viewer), if used
        web.secret              the key that signs the console's session cookies (mode 0600)

Model weights live in ``models.path`` (by default ``var/models`` beside the storage folder),
which :class:`~dicomnode.models.registry.ModelStore` owns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dicomnode.config import StorageConfig

LOCK_FILE = "dicomnode.lock"
DATABASE_FILE = "dicomnode.sqlite3"
SPOOL = "spool"
JOBS = "jobs"
VIEWER = "viewer"
WEB_SECRET = "web.secret"
#: Folders inside the spool.
INCOMING = ".incoming"
QUARANTINE = ".quarantine"
CONFLICTS = ".conflicts"
CLEAN_MARKER = ".clean-shutdown"
#: Suffix of a results folder being written.
PARTIAL = ".partial"


@dataclass(frozen=True)
class StorageLayout:
    """The paths under one storage root; ``configured_database_url`` is storage.database_url."""

    root: Path
    configured_database_url: str = ""

    @classmethod
    def of(cls, storage: StorageConfig) -> StorageLayout:
        return cls(storage.path, storage.database_url)

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def spool(self) -> Path:
        return self.root / SPOOL

    @property
    def quarantine(self) -> Path:
        return self.spool / QUARANTINE

    @property
    def conflicts(self) -> Path:
        return self.spool / CONFLICTS

    @property
    def jobs(self) -> Path:
        return self.root / JOBS

    @property
    def viewer(self) -> Path:
        return self.root / VIEWER

    @property
    def web_secret(self) -> Path:
        return self.root / WEB_SECRET

    def results(self, job_id: int) -> Path:
        """The results folder of a job."""
        return self.jobs / f"{job_id:08d}"

    @property
    def database_url(self) -> str:
        """storage.database_url, or SQLite in the storage folder (WAL mode) when it is empty."""
        return (self.configured_database_url
                or f"sqlite:///{(self.root / DATABASE_FILE).resolve()}")
