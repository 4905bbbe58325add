"""The spine vocabulary: one entry per structure any of the three pipelines can produce.

Each :class:`Structure` carries what a DICOM Segment Description needs (PS3.3 C.8.20.4):
Segmented Property Category and Type (SNOMED CT where one exists, else the private
``99DCMNODE`` scheme of :mod:`.private`), optional type modifiers (laterality, superior /
inferior), an optional Anatomic Region (the level of a per-level substructure), the Segment
Label, and a fixed display colour (RGB for the preview, CIELab for
RecommendedDisplayCIELabValue).

The table is built once at import time into an immutable mapping; nothing mutates it.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .private import private_code

Kind = Literal[
    "vertebra", "body", "disc", "sacrum", "coccyx", "cord", "canal", "subregion", "endplate"
]

#: Every vertebral level a pipeline can name, cranial to caudal (T13 and L6 are supernumerary).
LEVELS: tuple[str, ...] = (
    *(f"C{i}" for i in range(1, 8)),
    *(f"T{i}" for i in range(1, 13)),
    "T13",
    *(f"L{i}" for i in range(1, 7)),
)

#: (upper, lower) level pairs that have an intervertebral disc; "S1" is the sacrum.
DISC_PAIRS: tuple[tuple[str, str], ...] = (
    *((f"C{i}", f"C{i + 1}") for i in range(2, 7)),
    ("C7", "T1"),
    *((f"T{i}", f"T{i + 1}") for i in range(1, 12)),
    ("T12", "T13"),
    ("T12", "L1"),
    ("T13", "L1"),
    *((f"L{i}", f"L{i + 1}") for i in range(1, 6)),
    ("L5", "S1"),
    ("L6", "S1"),
)

ANATOMICAL_STRUCTURE: Code = codes.SCT.AnatomicalStructure
#: SNOMED CT 3572006 "Vertebral body" is a real SNOMED CT concept (used by TotalSegmentator's
#: SNOMED table) but is not listed in PS3.16, so pydicom's dictionary lacks it.
VERTEBRAL_BODY: Code = Code("3572006", "SCT", "Vertebral body")
_PRIVATE_LEVEL_CODES = {"T13": "T13", "L6": "L6"}
_PRIVATE_DISC_CODES = {
    ("T12", "T13"): "D-T12T13",
    ("T13", "L1"): "D-T13L1",
    ("L5", "L6"): "D-L5L6",
    ("L6", "S1"): "D-L6S1",
}


@dataclass(frozen=True)
class Structure:
    """One segmentable spine structure.

    Attributes:
        key: stable identifier used by label mappings and measurements (``"vertebra_L1"``).
        label: Segment Label (0062,0005), at most 64 characters.
        kind: what the measurements treat it as.
        type: Segmented Property Type Code Sequence (0062,000F) item.
        type_modifiers: Segmented Property Type Modifier Code Sequence (0062,0011) items.
        anatomic_region: Anatomic Region Sequence (0008,2218) item, e.g. the level of a
            per-level vertebral body or endplate.
        level: the vertebral level for per-level structures (the upper level for discs).
        rgb: display colour, 0–255 per channel.
        category: Segmented Property Category Code Sequence (0062,0003) item.
    """

    key: str
    label: str
    kind: Kind
    type: Code
    rgb: tuple[int, int, int]
    type_modifiers: tuple[Code, ...] = ()
    anatomic_region: Code | None = None
    level: str | None = None
    category: Code = field(default=ANATOMICAL_STRUCTURE)

    @property
    def cielab(self) -> hd.color.CIELabColor:
        """Colour for Recommended Display CIELab Value (0062,000D)."""
        return hd.color.CIELabColor.from_rgb(*self.rgb)


def level_code(level: str) -> Code:
    """SNOMED CT code of a vertebra level (private code for T13 and L6)."""
    if level in _PRIVATE_LEVEL_CODES:
        return private_code(_PRIVATE_LEVEL_CODES[level])
    code: Code = getattr(codes.SCT, f"{level}Vertebra")
    return code


def disc_code(upper: str, lower: str) -> Code:
    """SNOMED CT code of the disc between two levels (private where SNOMED CT has none)."""
    if (upper, lower) in _PRIVATE_DISC_CODES:
        return private_code(_PRIVATE_DISC_CODES[(upper, lower)])
    code: Code = getattr(codes.SCT, f"{upper}{lower}Disc")
    return code


def _level_rgb(index: int, lightness: float) -> tuple[int, int, int]:
    # Golden-ratio hue steps keep neighbouring levels clearly distinct in any viewer.
    hue = (index * 0.618034) % 1.0
    r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
    return (round(r * 255), round(g * 255), round(b * 255))


def _build() -> dict[str, Structure]:
    out: list[Structure] = []
    for i, level in enumerate(LEVELS):
        out.append(
            Structure(f"vertebra_{level}", f"{level} vertebra", "vertebra", level_code(level),
                      _level_rgb(i, 0.55), level=level)
        )
    for i, level in enumerate(LEVELS):
        out.append(
            Structure(f"body_{level}", f"{level} vertebral body", "body", VERTEBRAL_BODY,
                      _level_rgb(i, 0.50), anatomic_region=level_code(level), level=level)
        )
    out.append(Structure("sacrum", "Sacrum", "sacrum", codes.SCT.Sacrum, (200, 120, 60)))
    out.append(Structure("coccyx", "Coccyx", "coccyx", codes.SCT.Coccyx, (160, 90, 50)))
    for i, (upper, lower) in enumerate(DISC_PAIRS):
        shade = 170 + 40 * (i % 2)  # alternate two light blues so adjacent discs differ
        out.append(
            Structure(f"disc_{upper}_{lower}", f"{upper}/{lower} disc", "disc",
                      disc_code(upper, lower), (90, shade, 255), level=upper)
        )
    out.append(Structure("disc", "Intervertebral disc", "disc", private_code("D"), (90, 190, 255)))
    out.append(Structure("spinal_cord", "Spinal cord", "cord", codes.SCT.SpinalCord, (255, 230, 0)))
    out.append(Structure("spinal_canal", "Spinal canal", "canal", codes.SCT.VertebralCanal,
                         (0, 170, 90)))
    left, right = codes.SCT.Left, codes.SCT.Right
    subregions = [
        ("vertebral_body", "Vertebral body", VERTEBRAL_BODY, (), (230, 60, 60)),
        ("vertebral_arch", "Vertebral arch", codes.SCT.ArchOfVertebra, (), (60, 120, 230)),
        ("spinous_process", "Spinous process", codes.SCT.SpinousProcessOfVertebra, (),
         (160, 60, 220)),
        ("transverse_process_left", "Left transverse process",
         codes.SCT.TransverseProcessOrVertebra, (left,), (60, 200, 200)),
        ("transverse_process_right", "Right transverse process",
         codes.SCT.TransverseProcessOrVertebra, (right,), (40, 150, 150)),
        ("superior_articular_process_left", "Left superior articular process",
         codes.SCT.SuperiorArticularProcessOfVertebra, (left,), (240, 160, 40)),
        ("superior_articular_process_right", "Right superior articular process",
         codes.SCT.SuperiorArticularProcessOfVertebra, (right,), (200, 120, 20)),
        ("inferior_articular_process_left", "Left inferior articular process",
         codes.SCT.InferiorArticularProcessOfVertebra, (left,), (230, 100, 160)),
        ("inferior_articular_process_right", "Right inferior articular process",
         codes.SCT.InferiorArticularProcessOfVertebra, (right,), (190, 70, 130)),
    ]
    for key, label, code, mods, rgb in subregions:
        out.append(Structure(key, label, "body" if key == "vertebral_body" else "subregion",
                             code, rgb, type_modifiers=mods))
    endplate = private_code("EP")
    out.append(Structure("endplate", "Endplate", "endplate", endplate, (250, 250, 250)))
    out.append(Structure("endplate_superior", "Superior endplate", "endplate", endplate,
                         (255, 200, 200), type_modifiers=(codes.SCT.Superior,)))
    out.append(Structure("endplate_inferior", "Inferior endplate", "endplate", endplate,
                         (200, 200, 255), type_modifiers=(codes.SCT.Inferior,)))
    for i, level in enumerate(LEVELS):
        out.append(
            Structure(f"endplate_{level}", f"{level} endplates", "endplate", endplate,
                      _level_rgb(i, 0.80), anatomic_region=level_code(level), level=level)
        )
    return {s.key: s for s in out}


#: key → :class:`Structure`, in vocabulary order (levels cranial → caudal within each family).
VOCABULARY: MappingProxyType[str, Structure] = MappingProxyType(_build())
_ORDER = {key: i for i, key in enumerate(VOCABULARY)}


def structure(key: str) -> Structure:
    """The vocabulary entry ``key``; ``KeyError`` names the unknown key."""
    try:
        return VOCABULARY[key]
    except KeyError:
        raise KeyError(f"{key!r} is not a structure of the spine vocabulary") from None


def vocabulary_order(key: str) -> int:
    """Position of ``key`` in the vocabulary (used to number segments stably)."""
    return _ORDER[key]


def disc_key(upper: str, lower: str) -> str:
    """Vocabulary key of the disc between ``upper`` and ``lower`` ("S1" for the sacrum)."""
    key = f"disc_{upper}_{lower}"
    structure(key)
    return key
