"""Each job's results folder, written whole or not at all.

A run writes into ``jobs/<id>.partial/``; :meth:`ResultsStore.commit` syncs it and renames it
to ``jobs/<id>/``, so a crash leaves either the complete previous results or none, never a
mixture. Leftover ``.partial`` folders are removed at start-up.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dicomnode.storage.durable import fsync_folder, fsync_path
from dicomnode.storage.layout import PARTIAL, StorageLayout


class ResultsStore:
    """The ``jobs/`` folder of one storage root."""

    def __init__(self, layout: StorageLayout, *, fsync: bool = True):
        self.layout = layout
        self.fsync = fsync

    def folder(self, job_id: int) -> Path:
        return self.layout.results(job_id)

    def exists(self, job_id: int) -> bool:
        return self.folder(job_id).is_dir()

    def stage(self, job_id: int) -> Path:
        """An empty folder to write a run's results into."""
        partial = self._partial(job_id)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        return partial

    def discard(self, job_id: int) -> None:
        shutil.rmtree(self._partial(job_id), ignore_errors=True)

    def commit(self, job_id: int) -> Path:
        """Make the staged results the job's results (durably, when fsync is on)."""
        partial, final = self._partial(job_id), self.folder(job_id)
        if self.fsync:  # on disk before the job says they are there
            fsync_folder(partial)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        if self.fsync:
            fsync_path(final.parent)  # the rename itself
        return final

    def remove(self, job_id: int) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def remove_partials(self) -> int:
        """Drop folders a crashed run left half-written; return how many."""
        leftovers = list(self.layout.jobs.glob(f"*{PARTIAL}"))
        for leftover in leftovers:
            shutil.rmtree(leftover, ignore_errors=True)
        return len(leftovers)

    def _partial(self, job_id: int) -> Path:
        final = self.folder(job_id)
        return final.with_name(final.name + PARTIAL)
