"""A scan of every element of a data set (sequences, file meta) for identifying values."""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset


def _texts(ds: Dataset) -> Iterable[tuple[str, str]]:
    for element in ds.iterall():
        if element.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ"):
            continue
        values = element.value if element.VM > 1 else [element.value]
        for value in values:
            yield str(element.tag) + " " + (element.keyword or ""), str(value)
    if hasattr(ds, "file_meta"):
        for element in ds.file_meta:
            yield str(element.tag), str(element.value)


def find_phi(ds: Dataset, secrets: Iterable[str]) -> list[str]:
    """Every element whose value holds one of ``secrets`` (case-insensitive), as ``tag: value``."""
    wanted = [s.upper() for s in secrets if s]
    return [f"{where}: {value}" for where, value in _texts(ds)
            if any(s in value.upper() for s in wanted)]
