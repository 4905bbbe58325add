"""Durable writes: a file or a rename is on disk before the node says it is."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename into it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Flush every file directly in ``folder`` and the folder itself to disk."""
    for path in folder.iterdir():
        if path.is_file():
            fsync_path(path)
    fsync_path(folder)


def free_bytes(path: Path) -> int:
    """Free space, in bytes, on the file system holding ``path`` (an existing folder). Called
    before every C-STORE: one statvfs, nothing else."""
    return shutil.disk_usage(path).free
