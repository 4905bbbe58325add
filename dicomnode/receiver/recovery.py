"""Re-index spool files the index lacks, after an unclean shutdown.

The index commits without syncing SQLite's WAL (see :mod:`dicomnode.store.database`), so after a
power cut the last rows may be missing while their spool files, synced before the answer went
out, are there. A file can also be in the spool without a row if the node died between the
rename and the commit; that instance was never acknowledged, but it is complete and valid, so
indexing it is harmless. A marker file written on a clean stop lets a normal start skip the
scan.
"""

from __future__ import annotations

import logging

import pydicom

from converters.instance import frame_count
from dicomnode.grouping import instance_identity
from dicomnode.logs import log_event
from dicomnode.receiver.dataset import inspect_dataset
from dicomnode.receiver.errors import CorruptDataset
from dicomnode.receiver.scp import SeriesStarted
from dicomnode.storage.layout import CLEAN_MARKER
from dicomnode.storage.spool import Spool
from dicomnode.store import InstanceIndex, InstanceRecord

LOGGER = logging.getLogger("dicomnode.receiver")



def index_file(spool: Spool, relative: str) -> InstanceRecord:
    """Build the index record of a spool file (read back as it was stored)."""
    path = spool.root / relative
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    raw = path.read_bytes()
    start = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)
    syntax = str(meta.TransferSyntaxUID)
    sop_class = str(meta.MediaStorageSOPClassUID)
    summary = inspect_dataset(raw[start:], syntax)
    study, series = instance_identity(summary.attributes,
                                      str(meta.get("SourceApplicationEntityTitle", "")),
                                      sop_class, summary.has_pixels)
    return InstanceRecord(study, series, str(meta.MediaStorageSOPInstanceUID), sop_class, syntax,
                          summary.text("InstanceNumber") or None, relative, len(raw), None,
                          summary.content_digest(syntax), frame_count(summary.attributes))


def recover(spool: Spool, index: InstanceIndex, on_series_started: SeriesStarted) -> int:
    """Index spool files missing from the index unless the last stop was clean; return how
    many were added."""
    marker = spool.root / CLEAN_MARKER
    if marker.exists():
        marker.unlink()
        return 0
    known = index.known_paths()
    added = 0
    for relative in spool.instance_files():
        if relative in known:
            continue
        try:
            outcome = index.add_instance(index_file(spool, relative))
        except (CorruptDataset, OSError, ValueError) as exc:
            log_event(LOGGER, "recovery.unreadable", logging.WARNING, path=relative,
                      reason=str(exc))
            continue
        if outcome.arm_timer:
            on_series_started(outcome)
        added += 1
    if added:
        log_event(LOGGER, "recovery.reindexed", instances=added)
    return added


def mark_clean(spool: Spool) -> None:
    """Record a clean stop (everything acknowledged is indexed and committed)."""
    (spool.root / CLEAN_MARKER).touch()
