"""The private coding scheme for spine concepts that PS3.16 / SNOMED CT do not name.

DICOM allows local coding schemes whose Coding Scheme Designator begins with ``99``
(PS3.3 C.12.1.1.2, PS3.16 section 8). Every object that uses one of these codes also
carries a Coding Scheme Identification Sequence item (see :func:`coding_scheme_item`) so
that a receiver can tell what ``99DCMNODE`` means.

Codes (Code Value → Code Meaning):

=========  ==========================================================
T13        T13 vertebra (supernumerary thoracic vertebra)
L6         L6 vertebra (supernumerary / transitional lumbar vertebra)
D-T12T13   T12/T13 disc
D-T13L1    T13/L1 disc
D-L5L6     L5/L6 disc
D-L6S1     L6/S1 disc
D          Intervertebral disc (any level; SPINEPS semantic label)
EP         Vertebral endplate
HLR        Vertebral body height loss ratio (1 - min/max of the
           anterior, middle and posterior heights; Genant-style)
TRAB       Trabecular region by erosion of the vertebral body
L3POS      Axial position of the L3 vertebral body centre
=========  ==========================================================

The values never change meaning; new concepts get new values.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

DESIGNATOR = "99DCMNODE"
SCHEME_VERSION = "1.0"
SCHEME_NAME = "dicomnode spine vocabulary"
RESPONSIBLE_ORGANIZATION = "dicomnode project"

#: Code Value → Code Meaning of every private concept (documented in the module docstring).
MEANINGS: dict[str, str] = {
    "T13": "T13 vertebra",
    "L6": "L6 vertebra",
    "D-T12T13": "T12/T13 disc",
    "D-T13L1": "T13/L1 disc",
    "D-L5L6": "L5/L6 disc",
    "D-L6S1": "L6/S1 disc",
    "D": "Intervertebral disc",
    "EP": "Vertebral endplate",
    "HLR": "Vertebral body height loss ratio",
    "TRAB": "Trabecular region by erosion of the vertebral body",
    "L3POS": "Axial position of L3 vertebral body centre",
}


def private_code(value: str) -> Code:
    """The private :class:`~pydicom.sr.coding.Code` with Code Value ``value``.

    Raises ``KeyError`` naming the value when it is not part of the scheme.
    """
    try:
        meaning = MEANINGS[value]
    except KeyError:
        raise KeyError(
            f"CodeValue {value!r} is not defined in coding scheme {DESIGNATOR}") from None
    return Code(value, DESIGNATOR, meaning, SCHEME_VERSION)


def declare_scheme(ds: Dataset) -> None:
    """Add the ``99DCMNODE`` item to ``ds``'s Coding Scheme Identification Sequence
    (0008,0110), keeping items already there."""
    items = list(ds.get("CodingSchemeIdentificationSequence", []))
    if not any(i.get("CodingSchemeDesignator") == DESIGNATOR for i in items):
        ds.CodingSchemeIdentificationSequence = [*items, coding_scheme_item()]


def coding_scheme_item() -> Dataset:
    """One item of the Coding Scheme Identification Sequence (0008,0110) for ``99DCMNODE``."""
    item = Dataset()
    item.CodingSchemeDesignator = DESIGNATOR
    item.CodingSchemeName = SCHEME_NAME
    item.CodingSchemeVersion = SCHEME_VERSION
    item.CodingSchemeResponsibleOrganization = RESPONSIBLE_ORGANIZATION
    return item
