"""De-identify one data set: the Annex E actions of :mod:`converters.deid.profile`, keyed
pseudonyms, HMAC-remapped UIDs and a per-patient date shift, on top of dicognito.

Everything is a function of (key, original value): the same source UID always becomes the same
new UID, so the node's SEG, SR and preview, de-identified with the same key, reference the
de-identified source series exactly as the originals reference the source. dicognito walks the
data set (sequences included) and replaces whatever identifying element the profile table does
not name (any other person name, identifier, address); the handlers here run before its own.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import re
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import pydicom
from dicognito.anonymizer import Anonymizer
from dicognito.datetimeanonymizer import DateTimeAnonymizer
from dicognito.element_anonymizer import ElementAnonymizer
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from converters.deid.profile import DATES, PSEUDONYMISED, Action, Options, actions

#: Secondary Capture Image Storage and its multi-frame variants (PS3.4 B.5).
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: The date shift lies in [MIN, MAX) days into the past.
_SHIFT_MIN_DAYS, _SHIFT_MAX_DAYS = 62, 730
_DUMMY = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "PN": "Anonymous"}


@dataclass(frozen=True)
class Pseudonym:
    """A patient's identity at a de-identifying destination."""

    patient_id: str
    patient_name: str
    #: Days added to every date (negative: into the past); 0 when dates are not shifted.
    date_offset_days: int


@dataclass(frozen=True)
class Deidentified:
    """A de-identified copy and what maps it back (for the optional re-identification index)."""

    dataset: Dataset
    original_patient_id: str
    pseudonym: Pseudonym
    #: (original, new) Study and Series Instance UIDs.
    study_uid: tuple[str, str]
    series_uid: tuple[str, str]


def burned_in_reason(ds: Dataset, modalities: Collection[str] = ()) -> str | None:
    """Why the pixels of ``ds`` may show identifying text, or None when nothing says so."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return None
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "BurnedInAnnotation is YES"
    if str(ds.get("SOPClassUID", "")).startswith(_SECONDARY_CAPTURE):
        return "secondary capture (screen captures often show the patient's name)"
    modality = str(ds.get("Modality", "")).upper()
    if modality and modality in {m.upper() for m in modalities}:
        return f"modality {modality} is listed as burning annotations into the pixels"
    return None


class Deidentifier:
    """Applies one profile with one site key; deterministic for a given (key, options)."""

    def __init__(self, key: bytes, options: Options, *, profile: str = "basic"):
        if not key:
            raise ValueError("the de-identification key is empty")
        self._key = key
        self.options = options
        self.profile = profile
        self._actions = actions(options)

    def _digest(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._key, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """The new UID of ``original``: 2.25 form of a name-based UUID from the HMAC."""
        return f"2.25.{uuid.UUID(bytes=self._digest('uid', original)[:16], version=5).int}"

    def pseudonym(self, patient: str) -> Pseudonym:
        """The pseudonym of a patient (their Patient ID, else name and birth date)."""
        code = base64.b32encode(self._digest("patient", patient)[:10]).decode()
        offset = 0
        if self.options.retain_longitudinal_modified_dates:
            span = _SHIFT_MAX_DAYS - _SHIFT_MIN_DAYS
            number = int.from_bytes(self._digest("dates", patient)[:8], "big")
            offset = -(_SHIFT_MIN_DAYS + number % span)
        return Pseudonym(patient_id=f"RP{code[:14]}", patient_name=f"RESEARCH^{code[:14]}",
                         date_offset_days=offset)

    @staticmethod
    def patient_key(ds: Dataset) -> str:
        patient_id = str(ds.get("PatientID", "") or "").strip()
        if patient_id:
            return patient_id
        return f"{ds.get('PatientName', '')}|{ds.get('PatientBirthDate', '')}"

    def apply(self, source: Dataset) -> Deidentified:
        """A de-identified deep copy of ``source`` (which is left as it is)."""
        ds = copy.deepcopy(source)
        patient = self.patient_key(ds)
        pseudonym = self.pseudonym(patient)
        identifiers = [str(ds.get(k, "") or "") for k in ("PatientID", "AccessionNumber")]
        identifiers += [part for part in re.split(r"[\^= ]+", str(ds.get("PatientName", "")))]
        study = str(ds.get("StudyInstanceUID", ""))
        series = str(ds.get("SeriesInstanceUID", ""))

        if getattr(ds, "file_meta", None) is None:
            ds.file_meta = FileMetaDataset()  # dicognito walks it
        ds.remove_private_tags()
        for tag in [t for t in ds.keys() if t.group >> 8 in (0x50, 0x60) and t.group % 2 == 0]:
            del ds[tag]  # curves (50xx) and overlays (60xx): Annex E removes them

        # dicognito's own seed only decides the look of values no handler here takes; it is
        # keyed per patient so those stay consistent too.
        anonymizer = Anonymizer(seed=self._digest("seed", patient).hex())
        if self.options.retain_longitudinal_modified_dates:
            anonymizer.add_element_handler(DateTimeAnonymizer(pseudonym.date_offset_days * 24))
        anonymizer.add_element_handler(_UIDRemapper(self))
        anonymizer.add_element_handler(_ProfileActions(self, pseudonym, identifiers))
        anonymizer.anonymize(ds)

        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = f"dicomnode profile {self.profile} (PS3.15 E.1)"[:64]
        codes = []
        for value, meaning in self.options.codes():
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(codes)
        ds.LongitudinalTemporalInformationModified = (
            "MODIFIED" if self.options.retain_longitudinal_modified_dates else "REMOVED")
        return Deidentified(dataset=ds, original_patient_id=patient, pseudonym=pseudonym,
                            study_uid=(study, str(ds.get("StudyInstanceUID", ""))),
                            series_uid=(series, str(ds.get("SeriesInstanceUID", ""))))


def _keeps_uid(keyword: str, value: str) -> bool:
    """Class UIDs, transfer syntaxes and the standard's own UIDs (coding schemes, context
    groups...) name things, not patients or studies: they stay."""
    return (keyword.endswith("ClassUID") or keyword == "TransferSyntaxUID"
            or value in pydicom.uid.UID_dictionary)


class _UIDRemapper(ElementAnonymizer):
    """Every other UI value (SOP, series, study, frame of reference, references to them)."""

    def __init__(self, owner: Deidentifier):
        self._owner = owner

    def __call__(self, dataset: Dataset, data_element: DataElement) -> bool:
        if data_element.VR != "UI":
            return False
        if not data_element.value:
            return True
        keyword = data_element.keyword or ""
        values = (list(data_element.value) if data_element.VM > 1 else [data_element.value])
        new = [v if _keeps_uid(keyword, str(v)) else self._owner.uid(str(v)) for v in values]
        data_element.value = new if data_element.VM > 1 else new[0]
        return True

    def describe_actions(self) -> Iterator[str]:
        yield "Replace instance UIs with a keyed (HMAC-SHA256) 2.25 UID"


class _ProfileActions(ElementAnonymizer):
    """The Table E.1-1 action of each attribute the profile names; dates by VR."""

    def __init__(self, owner: Deidentifier, pseudonym: Pseudonym, identifiers: list[str]):
        self._owner = owner
        self._pseudonym = pseudonym
        self._cut = [re.escape(v) for v in identifiers if len(v.strip()) >= 2]

    def _clean(self, text: str) -> str:
        if not self._cut:
            return text
        return re.sub("|".join(self._cut), "*", text, flags=re.IGNORECASE)

    def __call__(self, dataset: Dataset, data_element: DataElement) -> bool:
        keyword = data_element.keyword or ""
        if keyword == "PatientID":
            data_element.value = self._pseudonym.patient_id
            return True
        if keyword == "PatientName":
            data_element.value = self._pseudonym.patient_name
            return True
        assert keyword not in PSEUDONYMISED
        action = self._owner._actions.get(keyword)
        if action is None and data_element.VR in ("DA", "DT", "TM"):
            if self._owner.options.retain_longitudinal_modified_dates:
                return False  # shifted by the date handler
            action = DATES.get(keyword, Action.REMOVE)
        if action is None or action is Action.KEEP:
            return action is Action.KEEP
        if action is Action.REMOVE:
            del dataset[data_element.tag]
        elif action is Action.EMPTY:
            data_element.value = Sequence() if data_element.VR == "SQ" else ""
        elif action is Action.DUMMY:
            data_element.value = _DUMMY.get(data_element.VR, "ANONYMOUS")
        elif isinstance(data_element.value, str):  # CLEAN
            data_element.value = self._clean(data_element.value)
        return True

    def describe_actions(self) -> Iterator[str]:
        yield "Apply PS3.15 Table E.1-1 actions with the selected options"
