"""The de-identifying transform (converters.deid): Annex E actions and options, keyed
pseudonyms, HMAC UIDs, per-patient date shift, burned-in annotation."""

from __future__ import annotations

import copy

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from converters.deid import Deidentifier, Options, burned_in_reason
from tests.deid.phi import find_phi
from tests.synthetic import axial_ct

PHI = ["Doe^Jane", "Jane", "MRN-4711", "19561231", "ACC-99", "St Elsewhere", "House^Gregory",
       "Gregory"]


def identified(patient_id: str = "MRN-4711", study_date: str = "20260101") -> Dataset:
    ds = copy.deepcopy(axial_ct().datasets[0])
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", patient_id, "19561231"
    ds.AccessionNumber, ds.InstitutionName = "ACC-99", "St Elsewhere"
    ds.ReferringPhysicianName, ds.OperatorsName = "House^Gregory", "House^Gregory"
    ds.InstitutionAddress, ds.StationName, ds.PatientAge = "1 Main St", "CT01", "069Y"
    ds.StudyDescription, ds.SeriesDescription = "Spine for Doe", "sag T2 MRN-4711"
    ds.StudyDate, ds.StudyInstanceUID = study_date, generate_uid()
    ds.add_new(0x00091010, "LO", "private Doe^Jane")
    ds.add_new(0x60003000, "OW", b"\0\0")
    ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])  # (5200,9229): not a curve
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.SourceImageSequence = Sequence([ref])
    return ds


def test_basic_profile_leaves_no_identity() -> None:
    ds = identified()
    result = Deidentifier(b"site-key", Options()).apply(ds)
    out = result.dataset
    assert find_phi(out, PHI) == []
    assert out.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100"]
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert out.StudyDate == "" and "SeriesDescription" not in out and "PatientAge" not in out
    assert 0x00091010 not in out and 0x60003000 not in out
    assert "SharedFunctionalGroupsSequence" in out
    assert ds.PatientName == "Doe^Jane"  # the source is left alone
    assert out.SOPClassUID == ds.SOPClassUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != ds.SOPInstanceUID


def test_options_retain_what_they_name() -> None:
    options = Options(retain_longitudinal_modified_dates=True, retain_patient_characteristics=True,
                      retain_device_identity=True, retain_institution_identity=True,
                      clean_descriptors=True)
    out = Deidentifier(b"site-key", options).apply(identified()).dataset
    assert out.PatientAge == "069Y" and out.StationName == "CT01"
    assert out.InstitutionName == "St Elsewhere"
    assert out.StudyDescription == "Spine for *" and out.SeriesDescription == "sag T2 *"
    assert out.StudyDate != "20260101" and out.PatientBirthDate == ""
    assert {c.CodeValue for c in out.DeidentificationMethodCodeSequence} == {
        "113100", "113105", "113107", "113108", "113109", "113112"}


def test_same_patient_same_pseudonym_and_shift_on_every_study() -> None:
    options = Options(retain_longitudinal_modified_dates=True)
    first = Deidentifier(b"site-key", options).apply(identified(study_date="20260101"))
    second = Deidentifier(b"site-key", options).apply(identified(study_date="20260301"))
    assert first.pseudonym == second.pseudonym
    assert first.dataset.PatientID == second.dataset.PatientID == first.pseudonym.patient_id
    assert first.dataset.StudyInstanceUID != second.dataset.StudyInstanceUID
    # one offset per patient: the interval between the studies is kept
    from datetime import date
    a, b = (date.fromisoformat(pydicom.valuerep.DA(r.dataset.StudyDate).isoformat())
            for r in (first, second))
    assert (b - a).days == (date(2026, 3, 1) - date(2026, 1, 1)).days
    other = Deidentifier(b"site-key", options).apply(identified(patient_id="MRN-1"))
    assert other.pseudonym.patient_id != first.pseudonym.patient_id


def test_another_key_gives_other_pseudonyms_and_uids() -> None:
    ds = identified()
    one = Deidentifier(b"key-one", Options()).apply(ds)
    two = Deidentifier(b"key-two", Options()).apply(ds)
    assert one.pseudonym.patient_id != two.pseudonym.patient_id
    assert one.dataset.SOPInstanceUID != two.dataset.SOPInstanceUID


def test_references_are_remapped_like_the_objects_they_reference() -> None:
    source = identified()
    deid = Deidentifier(b"site-key", Options())
    image = deid.apply(source).dataset
    derived = Dataset()
    derived.PatientID, derived.SOPClassUID = source.PatientID, "1.2.840.10008.5.1.4.1.1.66.4"
    derived.SOPInstanceUID = generate_uid()
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    series.ReferencedInstanceSequence = Sequence([item])
    derived.ReferencedSeriesSequence = Sequence([series])
    out = deid.apply(derived).dataset
    ref = out.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == image.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPClassUID == source.SOPClassUID
    assert image.SourceImageSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert all(len(u) <= 64 for u in (image.SOPInstanceUID, image.StudyInstanceUID))


def test_burned_in_annotation_reasons() -> None:
    ds = identified()
    assert burned_in_reason(ds) is None
    ds.BurnedInAnnotation = "YES"
    assert "BurnedInAnnotation" in (burned_in_reason(ds) or "")
    ds.BurnedInAnnotation = "NO"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    assert "secondary capture" in (burned_in_reason(ds) or "")
    ds.SOPClassUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.6.1", "US"
    assert burned_in_reason(ds) is None
    assert "US" in (burned_in_reason(ds, ["us"]) or "")
