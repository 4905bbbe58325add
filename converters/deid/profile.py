"""DICOM PS3.15 Annex E, the Basic Application Level Confidentiality Profile, as an action per
attribute, with the options a site selects (Table E.1-1 columns).

Only the attributes the profile names are listed here; everything else that can carry an
identity is caught by type in :mod:`converters.deid.transform` (every UI remapped, every other
PN and identifier replaced by dicognito, private elements and overlays removed).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    """Table E.1-1 action codes (U, remap a UID, is applied to every UI element)."""

    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    KEEP = "K"
    CLEAN = "C"


@dataclass(frozen=True)
class Options:
    """The profile options of Table E.1-1 a site selects (all off: the Basic Profile)."""

    #: Retain Longitudinal Temporal Information with Modified Dates (113107): dates and times
    #: shifted by one offset per patient instead of removed.
    retain_longitudinal_modified_dates: bool = False
    #: Retain Patient Characteristics (113108): sex, age, size, weight...
    retain_patient_characteristics: bool = False
    #: Retain Device Identity (113109): serial numbers, station name...
    retain_device_identity: bool = False
    #: Retain Institution Identity (113112).
    retain_institution_identity: bool = False
    #: Clean Descriptors (113105): descriptions kept, with the patient's names and IDs cut out.
    clean_descriptors: bool = False

    def codes(self) -> list[tuple[str, str]]:
        """(code value, meaning) of CID 7050 for De-identification Method Code Sequence."""
        chosen = [("113100", "Basic Application Confidentiality Profile")]
        for flag, code in ((self.clean_descriptors, ("113105", "Clean Descriptors Option")),
                           (self.retain_longitudinal_modified_dates,
                            ("113107", "Retain Longitudinal Temporal Information Modified "
                                       "Dates Option")),
                           (self.retain_patient_characteristics,
                            ("113108", "Retain Patient Characteristics Option")),
                           (self.retain_device_identity, ("113109", "Retain Device Identity "
                                                                    "Option")),
                           (self.retain_institution_identity,
                            ("113112", "Retain Institution Identity Option"))):
            if flag:
                chosen.append(code)
        return chosen


#: Patient identity (always replaced by the keyed pseudonym, never an option).
PSEUDONYMISED = frozenset({"PatientID", "PatientName"})

#: Basic Profile actions of the attributes no option retains.
BASIC: dict[str, Action] = {
    "AccessionNumber": Action.EMPTY,
    "AdmittingDiagnosesDescription": Action.REMOVE,
    "AdmittingDiagnosesCodeSequence": Action.REMOVE,
    "AdditionalPatientHistory": Action.REMOVE,
    "AdmissionID": Action.REMOVE,
    "Allergies": Action.REMOVE,
    "Arbitrary": Action.REMOVE,
    "AuthorObserverSequence": Action.REMOVE,
    "BranchOfService": Action.REMOVE,
    "ConsultingPhysicianName": Action.REMOVE,
    "ContentCreatorName": Action.EMPTY,
    "CountryOfResidence": Action.REMOVE,
    "CurrentPatientLocation": Action.REMOVE,
    "CustodialOrganizationSequence": Action.REMOVE,
    "DistributionAddress": Action.REMOVE,
    "DistributionName": Action.REMOVE,
    "FillerOrderNumberImagingServiceRequest": Action.EMPTY,
    "InstitutionCodeSequence": Action.REMOVE,
    "IssuerOfAdmissionID": Action.REMOVE,
    "IssuerOfPatientID": Action.REMOVE,
    "MedicalAlerts": Action.REMOVE,
    "MedicalRecordLocator": Action.REMOVE,
    "MilitaryRank": Action.REMOVE,
    "NameOfPhysiciansReadingStudy": Action.REMOVE,
    "Occupation": Action.REMOVE,
    "OperatorsName": Action.REMOVE,
    "OperatorIdentificationSequence": Action.REMOVE,
    "OrderCallbackPhoneNumber": Action.REMOVE,
    "OrderEnteredBy": Action.REMOVE,
    "OrderEntererLocation": Action.REMOVE,
    "OtherPatientIDs": Action.REMOVE,
    "OtherPatientIDsSequence": Action.REMOVE,
    "OtherPatientNames": Action.REMOVE,
    "PatientAddress": Action.REMOVE,
    "PatientBirthDate": Action.EMPTY,
    "PatientBirthName": Action.REMOVE,
    "PatientBirthTime": Action.REMOVE,
    "PatientComments": Action.REMOVE,
    "PatientInsurancePlanCodeSequence": Action.REMOVE,
    "PatientMotherBirthName": Action.REMOVE,
    "PatientReligiousPreference": Action.REMOVE,
    "PatientTelephoneNumbers": Action.REMOVE,
    "PatientTelecomInformation": Action.REMOVE,
    "PerformingPhysicianName": Action.REMOVE,
    "PerformingPhysicianIdentificationSequence": Action.REMOVE,
    "PersonName": Action.REMOVE,
    "PhysiciansOfRecord": Action.REMOVE,
    "PhysiciansOfRecordIdentificationSequence": Action.REMOVE,
    "PhysiciansReadingStudyIdentificationSequence": Action.REMOVE,
    "PlacerOrderNumberImagingServiceRequest": Action.EMPTY,
    "ReferencedPatientPhotoSequence": Action.REMOVE,
    "ReferencedPatientSequence": Action.REMOVE,
    "ReferringPhysicianAddress": Action.REMOVE,
    "ReferringPhysicianIdentificationSequence": Action.REMOVE,
    "ReferringPhysicianName": Action.EMPTY,
    "ReferringPhysicianTelephoneNumbers": Action.REMOVE,
    "RegionOfResidence": Action.REMOVE,
    "RequestAttributesSequence": Action.REMOVE,
    "RequestingPhysician": Action.REMOVE,
    "RequestingService": Action.REMOVE,
    "ResponsibleOrganization": Action.REMOVE,
    "ResponsiblePerson": Action.REMOVE,
    "ReviewerName": Action.REMOVE,
    "ScheduledPerformingPhysicianName": Action.REMOVE,
    "StudyID": Action.EMPTY,
    "VerifyingObserverName": Action.DUMMY,
    "VerifyingObserverSequence": Action.DUMMY,
    "VerifyingOrganization": Action.REMOVE,
}

#: Retain Patient Characteristics: Basic action → kept with the option.
PATIENT_CHARACTERISTICS: dict[str, Action] = {
    "EthnicGroup": Action.REMOVE,
    "PatientAge": Action.REMOVE,
    "PatientSex": Action.EMPTY,
    "PatientSexNeutered": Action.REMOVE,
    "PatientSize": Action.REMOVE,
    "PatientWeight": Action.REMOVE,
    "PregnancyStatus": Action.REMOVE,
    "SmokingStatus": Action.REMOVE,
    "SpecialNeeds": Action.REMOVE,
}

#: Retain Device Identity.
DEVICE_IDENTITY: dict[str, Action] = {
    "DetectorID": Action.REMOVE,
    # X/Z/D in Table E.1-1: a dummy, as Enhanced General Equipment requires a value
    "DeviceSerialNumber": Action.DUMMY,
    "GantryID": Action.REMOVE,
    "PerformedStationAETitle": Action.REMOVE,
    "PerformedStationName": Action.REMOVE,
    "PlateID": Action.REMOVE,
    "ScheduledStationAETitle": Action.REMOVE,
    "ScheduledStationName": Action.REMOVE,
    "SourceSerialNumber": Action.REMOVE,
    "StationName": Action.REMOVE,
}

#: Retain Institution Identity.
INSTITUTION_IDENTITY: dict[str, Action] = {
    "InstitutionAddress": Action.REMOVE,
    "InstitutionName": Action.REMOVE,
    "InstitutionalDepartmentName": Action.REMOVE,
}

#: Clean Descriptors: removed by the Basic Profile, cleaned with the option.
DESCRIPTORS: dict[str, Action] = {
    "AcquisitionComments": Action.REMOVE,
    "DerivationDescription": Action.REMOVE,
    "ImageComments": Action.REMOVE,
    "PerformedProcedureStepDescription": Action.REMOVE,
    "ProtocolName": Action.REMOVE,
    "RequestedProcedureDescription": Action.REMOVE,
    "SeriesDescription": Action.REMOVE,
    "StudyComments": Action.REMOVE,
    "StudyDescription": Action.REMOVE,
}

#: Dates and times without the longitudinal option (others of VR DA, DT, TM are removed).
#: Type 1 content dates get a dummy: their modules require a value.
DATES: dict[str, Action] = {
    "StudyDate": Action.EMPTY,
    "StudyTime": Action.EMPTY,
    "ContentDate": Action.DUMMY,
    "ContentTime": Action.DUMMY,
    "SeriesDate": Action.REMOVE,
    "SeriesTime": Action.REMOVE,
    "AcquisitionDate": Action.REMOVE,
    "AcquisitionTime": Action.REMOVE,
    "AcquisitionDateTime": Action.REMOVE,
}


def actions(options: Options) -> dict[str, Action]:
    """The action for each listed keyword under ``options`` (dates excluded: by VR)."""
    table = dict(BASIC)
    for retained, group in ((options.retain_patient_characteristics, PATIENT_CHARACTERISTICS),
                            (options.retain_device_identity, DEVICE_IDENTITY),
                            (options.retain_institution_identity, INSTITUTION_IDENTITY)):
        table.update({k: Action.KEEP if retained else v for k, v in group.items()})
    table.update({k: Action.CLEAN if options.clean_descriptors else v
                  for k, v in DESCRIPTORS.items()})
    return table
