"""The canonical spine vocabulary: codes, colours and pipeline label mappings."""

from .mapping import (
    LabelMapping,
    spineps_instances,
    spineps_subregions,
    totalspineseg,
    vertebral_bodies_ct,
)
from .private import DESIGNATOR as PRIVATE_SCHEME, coding_scheme_item, declare_scheme, private_code
from .table import LEVELS, VOCABULARY, Structure, disc_key, level_code, structure

__all__ = [
    "LEVELS", "PRIVATE_SCHEME", "VOCABULARY", "LabelMapping", "Structure", "coding_scheme_item",
    "declare_scheme",
    "disc_key", "level_code", "private_code", "spineps_instances", "spineps_subregions",
    "structure", "totalspineseg", "vertebral_bodies_ct",
]
