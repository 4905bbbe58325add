"""The per-level measurements of a job's SR, as a table for its page.

The SR is the TID 1500 report :mod:`converters.sr` writes. Its TID 1411 groups (the Measurement
Groups that reference a SEG segment) carry every measurement once, one group per structure;
the TID 1410 and 1501 groups repeat some of them for viewers and are left out. The report is
walked with pydicom: highdicom's parser validates every content item on the way and takes
about half a second for a lumbar spine, more than a page may spend.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

MEASUREMENT_GROUP = "125007"
REFERENCED_SEGMENT = "121191"
TRACKING_IDENTIFIER = "112039"
DERIVATION = "121401"
METHOD = "370129005"
FINDING_SITE = "363698007"
MODIFIER = "106233006"
#: The centroid's coordinates (DCM Image Position (Patient) X/Y/Z): where a structure is, not
#: a measurement of it.
POSITION = frozenset({"110901", "110902", "110903"})
#: UCUM codes as a reader writes them.
UNITS = {"[hnsf'U]": "HU", "{ratio}": "", "mm2": "mm²", "1": ""}


@dataclass(frozen=True)
class Column:
    label: str
    unit: str


@dataclass
class MeasurementTable:
    """One row per structure (its tracking identifier), one column per kind of measurement
    in the order they first appear; ``None`` where a structure lacks one."""

    columns: list[Column] = field(default_factory=list)
    rows: list[tuple[str, list[str | None]]] = field(default_factory=list)


def _code(item: Dataset, sequence: str = "ConceptNameCodeSequence") -> Dataset | None:
    codes = item.get(sequence)
    return codes[0] if codes else None


def _value(item: Dataset) -> str:
    code = _code(item)
    return str(code.CodeValue) if code is not None and "CodeValue" in code else ""


def _meaning(item: Dataset, sequence: str = "ConceptCodeSequence") -> str:
    code = _code(item, sequence)
    return str(code.CodeMeaning) if code is not None else ""


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence", []))


def _groups(node: Dataset) -> Iterator[Dataset]:
    """The TID 1411 groups under ``node``, depth first (through containers only: reading
    every item's children would parse the whole report)."""
    for item in _children(node):
        if item.get("ValueType") != "CONTAINER":
            continue
        if _value(item) != MEASUREMENT_GROUP:
            yield from _groups(item)
        elif any(_value(child) == REFERENCED_SEGMENT for child in _children(item)):
            yield item


def _qualifiers(num: Dataset) -> list[str]:
    """What tells this measurement from others of the same name: derivation, method, and the
    finding site's modifier (anterior, posterior) or the site itself (a canal level)."""
    out = []
    for child in _children(num):
        kind = _value(child)
        if kind in (DERIVATION, METHOD):
            out.append(_meaning(child))
        elif kind == FINDING_SITE:
            modifiers = [_meaning(m) for m in _children(child) if _value(m) == MODIFIER]
            out.extend(modifiers or [_meaning(child)])
    return [q for q in out if q]


def _number(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def read_measurements(path: Path) -> MeasurementTable:
    """The table of the SR at ``path``; raise ``ValueError`` when it is not a readable SR."""
    try:
        report = pydicom.dcmread(path)
    except (OSError, InvalidDicomError) as exc:
        raise ValueError(f"{path.name}: {exc}") from None
    if report.get("Modality") != "SR":
        raise ValueError(f"{path.name} is not a structured report")
    table = MeasurementTable()
    index: dict[Column, int] = {}
    for group in _groups(report):
        name = next((str(c.get("TextValue", "")) for c in _children(group)
                     if _value(c) == TRACKING_IDENTIFIER), "") or "?"
        cells: dict[int, str] = {}
        for num in _children(group):
            if num.get("ValueType") != "NUM" or _value(num) in POSITION \
                    or not num.get("MeasuredValueSequence"):
                continue
            measured = num.MeasuredValueSequence[0]
            unit_code = _code(measured, "MeasurementUnitsCodeSequence")
            raw_unit = str(unit_code.CodeValue) if unit_code is not None else ""
            qualifiers = _qualifiers(num)
            label = _meaning(num, "ConceptNameCodeSequence") + (
                f" ({', '.join(qualifiers)})" if qualifiers else "")
            column = Column(label, UNITS.get(raw_unit, raw_unit))
            position = index.setdefault(column, len(index))
            if position == len(table.columns):
                table.columns.append(column)
            cells[position] = _number(float(measured.NumericValue))
        table.rows.append((name, [cells.get(i) for i in range(len(index))]))
    width = len(table.columns)  # rows read before a later column appeared are padded
    table.rows = [(name, values + [None] * (width - len(values))) for name, values in table.rows]
    return table


__all__ = ["Column", "MeasurementTable", "read_measurements"]
