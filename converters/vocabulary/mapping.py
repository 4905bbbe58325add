"""From a pipeline's integer label values to vocabulary structures.

A :class:`LabelMapping` says, for one label map produced by one pipeline, which
vocabulary structure each label value means. The factories below encode the official
label tables of the three seed pipelines (see ``shared/reference/seed-models.md``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .table import LEVELS, Structure, disc_key, structure, vocabulary_order


@dataclass(frozen=True)
class LabelMapping:
    """Label value → vocabulary key for one label map.

    Attributes:
        name: short name of the label map ("vertebrae", "subregions"); it becomes part of the
            SEG Series Description and of the derived UIDs, so keep it stable.
        labels: label value (> 0) → vocabulary key. Several values may share one key.
    """

    name: str
    labels: Mapping[int, str]

    def __post_init__(self) -> None:
        for value, key in self.labels.items():
            if int(value) <= 0:
                raise ValueError(f"label value {value} of mapping {self.name!r} must be > 0")
            structure(key)  # raises for unknown keys
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def structures_present(self, labelmap: np.ndarray, *, strict: bool = False) -> list[Structure]:
        """The structures whose labels occur in ``labelmap``, in vocabulary order.

        With ``strict``, a label value that the mapping does not know raises ``ValueError``;
        otherwise such voxels are treated as background.
        """
        present = _values_present(labelmap)
        unknown = sorted(present - set(self.labels))
        if strict and unknown:
            raise ValueError(f"label values {unknown} of mapping {self.name!r} are not mapped")
        keys = {self.labels[v] for v in present if v in self.labels}
        return [structure(k) for k in sorted(keys, key=vocabulary_order)]

    def to_segment_numbers(
        self, labelmap: np.ndarray, structures: list[Structure]
    ) -> np.ndarray:
        """Relabel ``labelmap`` so that structure ``structures[i]`` has value ``i + 1``.

        Unmapped values become 0 (background). The result is uint8 when it fits, else uint16,
        as DICOM SEG pixel data allows.
        """
        number = {s.key: i + 1 for i, s in enumerate(structures)}
        top = max(int(labelmap.max(initial=0)), max(self.labels, default=0))
        lut = np.zeros(top + 1, dtype=np.uint8 if len(structures) < 256 else np.uint16)
        for value, key in self.labels.items():
            lut[value] = number.get(key, 0)
        out = np.empty(labelmap.shape, lut.dtype)
        for i in range(len(labelmap)):  # per frame: indexing makes an int64 copy of its index
            out[i] = lut[labelmap[i]]
        return out


def _values_present(labelmap: np.ndarray) -> set[int]:
    """Non-zero values in ``labelmap``; bincount is ~20× faster than unique on 8/16-bit maps."""
    if labelmap.dtype.kind in "ui" and labelmap.dtype.itemsize <= 2 and labelmap.size:
        if labelmap.dtype.kind == "i" and labelmap.min() < 0:
            raise ValueError("label map has negative values")
        top = int(labelmap.max())
        counts = np.zeros(top + 1, np.int64)
        # bincount casts to int64: go frame by frame to keep that copy small
        for frame in labelmap.reshape(len(labelmap) if labelmap.ndim > 2 else 1, -1):
            counts += np.bincount(frame, minlength=top + 1)
        return {int(v) for v in np.flatnonzero(counts) if v != 0}
    return {int(v) for v in np.unique(labelmap) if v != 0}


def vertebral_bodies_ct() -> LabelMapping:
    """VertebralBodiesCT (``dataset.json``): 1–12 T1–T12, 13–17 L1–L5, 18 L6, 19 sacrum,
    20 coccyx, 21 T13 — vertebral bodies, one per level."""
    labels = {i: f"body_T{i}" for i in range(1, 13)}
    labels.update({12 + i: f"body_L{i}" for i in range(1, 6)})
    labels.update({18: "body_L6", 19: "sacrum", 20: "coccyx", 21: "body_T13"})
    return LabelMapping("vertebral-bodies", labels)


def totalspineseg() -> LabelMapping:
    """TotalSpineSeg final labels (``tss_map.json``)."""
    labels: dict[int, str] = {1: "spinal_cord", 2: "spinal_canal", 50: "sacrum"}
    labels.update({10 + i: f"vertebra_C{i}" for i in range(1, 8)})
    labels.update({20 + i: f"vertebra_T{i}" for i in range(1, 13)})
    labels.update({40 + i: f"vertebra_L{i}" for i in range(1, 7)})
    labels.update({61 + i: disc_key(f"C{i}", f"C{i + 1}") for i in range(2, 7)})  # 63 = C2/C3
    labels[71] = disc_key("C7", "T1")
    labels.update({71 + i: disc_key(f"T{i}", f"T{i + 1}") for i in range(1, 12)})
    labels[91] = disc_key("T12", "L1")
    labels.update({91 + i: disc_key(f"L{i}", f"L{i + 1}") for i in range(1, 6)})
    labels[100] = disc_key("L5", "S1")
    return LabelMapping("spine", labels)


def spineps_subregions() -> LabelMapping:
    """SPINEPS semantic mask (``seg-spine``): vertebral subregions, discs, cord, canal,
    sacrum, endplates. Label 51 (dens axis, CT) has no vocabulary entry and is left out."""
    return LabelMapping(
        "subregions",
        {
            41: "vertebral_arch", 42: "spinous_process",
            43: "transverse_process_left", 44: "transverse_process_right",
            45: "superior_articular_process_left", 46: "superior_articular_process_right",
            47: "inferior_articular_process_left", 48: "inferior_articular_process_right",
            49: "vertebral_body", 50: "vertebral_body",
            52: "endplate_superior", 53: "endplate_inferior", 62: "endplate",
            60: "spinal_cord", 61: "spinal_canal", 100: "disc", 26: "sacrum",
        },
    )


#: SPINEPS / VERIDAH instance value → level.
_SPINEPS_LEVELS: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{7 + i: f"T{i}" for i in range(1, 13)},
    **{19 + i: f"L{i}" for i in range(1, 7)},
    28: "T13",
}


def spineps_instances(present_values: Iterable[int] = ()) -> LabelMapping:
    """SPINEPS instance mask (``seg-vert``): vertebrae 1–25 and 28 (T13), 26 sacrum,
    100+X the disc below vertebra X, 200+X the endplates of vertebra X.

    ``present_values`` are the label values of the mask being encoded: the disc below T12
    or L5 depends on whether T13 (28) or L6 (25) exists in that patient.
    """
    present = set(int(v) for v in present_values)
    levels_present = [lv for lv in LEVELS if any(
        _SPINEPS_LEVELS[v] == lv for v in present if v in _SPINEPS_LEVELS)]
    labels: dict[int, str] = {26: "sacrum"}
    for value, level in _SPINEPS_LEVELS.items():
        labels[value] = f"vertebra_{level}"
        labels[200 + value] = f"endplate_{level}"
        below = _next_level(level, levels_present)
        if below is not None:
            labels[100 + value] = disc_key(level, below)
    return LabelMapping("vertebrae", labels)


def _next_level(level: str, levels_present: list[str]) -> str | None:
    """The level caudal to ``level``; supernumerary T13/L6 only when present."""
    if level == "C1":
        return None  # C1/C2 has no disc
    order = [lv for lv in LEVELS if lv not in ("T13", "L6") or lv in levels_present]
    if level not in order:
        order = [*order, level]
        order.sort(key=LEVELS.index)
    i = order.index(level)
    if i + 1 < len(order):
        return order[i + 1]
    return "S1" if level in ("L5", "L6") else None
