"""A DICOM dataset as the image set metadata document's JSON (behaviour doc §4).

The document splits an instance's attributes into Patient, Study, Series and
Instance levels. AWS does not publish its table; this service uses the
attributes of the DICOM information model's modules at each level (PS3.3
Patient and Clinical Trial Subject modules → Patient; General Study, Patient
Study and Clinical Trial Study → Study; General Series and Clinical Trial
Series → Series), listed below by keyword. Everything else, the file meta
group included, is instance level.

Attributes are keyed by keyword; private tags and tags unknown to the
dictionary by 8 hex digits, with their VR in the instance's ``DICOMVRs``
(nested items included: the map is per instance). Values: empty → null;
IS/DS/DA/TM/DT and other strings as written; numbers as JSON numbers; AT as
8 hex digits; more than one value → array; SQ → array of objects; binary VRs
→ base64. PixelData is always null: frames are stored separately.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

PATIENT_KEYWORDS = frozenset(
    {
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence",
        "TypeOfPatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientBirthDateInAlternativeCalendar",
        "PatientDeathDateInAlternativeCalendar",
        "PatientAlternativeCalendar",
        "PatientSex",
        "QualityControlSubject",
        "ReferencedPatientSequence",
        "ReferencedPatientPhotoSequence",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "PatientBirthName",
        "PatientMotherBirthName",
        "MedicalRecordLocator",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientTelecomInformation",
        "MilitaryRank",
        "BranchOfService",
        "CountryOfResidence",
        "RegionOfResidence",
        "PatientReligiousPreference",
        "EthnicGroup",
        "PatientComments",
        "PatientSpeciesDescription",
        "PatientSpeciesCodeSequence",
        "PatientBreedDescription",
        "PatientBreedCodeSequence",
        "BreedRegistrationSequence",
        "StrainDescription",
        "StrainNomenclature",
        "StrainCodeSequence",
        "StrainAdditionalInformation",
        "StrainStockSequence",
        "GeneticModificationsSequence",
        "ResponsiblePerson",
        "ResponsiblePersonRole",
        "ResponsibleOrganization",
        "PatientIdentityRemoved",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
        "SourcePatientGroupIdentificationSequence",
        "GroupOfPatientsIdentificationSequence",
        "ClinicalTrialSponsorName",
        "ClinicalTrialProtocolID",
        "ClinicalTrialProtocolName",
        "ClinicalTrialSiteID",
        "ClinicalTrialSiteName",
        "ClinicalTrialSubjectID",
        "ClinicalTrialSubjectReadingID",
        "ClinicalTrialProtocolEthicsCommitteeName",
        "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
    }
)

STUDY_KEYWORDS = frozenset(
    {
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "IssuerOfAccessionNumberSequence",
        "StudyDescription",
        "ReferringPhysicianName",
        "ReferringPhysicianIdentificationSequence",
        "ConsultingPhysicianName",
        "ConsultingPhysicianIdentificationSequence",
        "PhysiciansOfRecord",
        "PhysiciansOfRecordIdentificationSequence",
        "NameOfPhysiciansReadingStudy",
        "PhysiciansReadingStudyIdentificationSequence",
        "RequestingServiceCodeSequence",
        "ReferencedStudySequence",
        "ProcedureCodeSequence",
        "ReasonForPerformedProcedureCodeSequence",
        "AdmittingDiagnosesDescription",
        "AdmittingDiagnosesCodeSequence",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "PatientBodyMassIndex",
        "MeasuredAPDimension",
        "MeasuredLateralDimension",
        "PatientSizeCodeSequence",
        "MedicalAlerts",
        "Allergies",
        "SmokingStatus",
        "PregnancyStatus",
        "LastMenstrualDate",
        "PatientState",
        "Occupation",
        "AdditionalPatientHistory",
        "PatientSexNeutered",
        "AdmissionID",
        "IssuerOfAdmissionIDSequence",
        "ServiceEpisodeID",
        "IssuerOfServiceEpisodeIDSequence",
        "ServiceEpisodeDescription",
        "ReasonForVisit",
        "ReasonForVisitCodeSequence",
        "ClinicalTrialTimePointID",
        "ClinicalTrialTimePointDescription",
        "ConsentForClinicalTrialUseSequence",
    }
)

SERIES_KEYWORDS = frozenset(
    {
        "SeriesInstanceUID",
        "SeriesNumber",
        "Modality",
        "Laterality",
        "SeriesDate",
        "SeriesTime",
        "SeriesDescription",
        "SeriesDescriptionCodeSequence",
        "PerformingPhysicianName",
        "PerformingPhysicianIdentificationSequence",
        "ProtocolName",
        "OperatorsName",
        "OperatorIdentificationSequence",
        "ReferencedPerformedProcedureStepSequence",
        "RelatedSeriesSequence",
        "BodyPartExamined",
        "PatientPosition",
        "SmallestPixelValueInSeries",
        "LargestPixelValueInSeries",
        "RequestAttributesSequence",
        "PerformedProcedureStepID",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "PerformedProcedureStepEndDate",
        "PerformedProcedureStepEndTime",
        "PerformedProcedureStepDescription",
        "PerformedProtocolCodeSequence",
        "CommentsOnThePerformedProcedureStep",
        "AnatomicalOrientationType",
        "TreatmentSessionUID",
        "ClinicalTrialCoordinatingCenterName",
        "ClinicalTrialSeriesID",
        "ClinicalTrialSeriesDescription",
    }
)

_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_STRING_NUMBER_VRS = frozenset({"IS", "DS"})


@dataclass
class InstanceAttributes:
    """One instance's attributes, split by level."""

    patient: dict[str, Any] = field(default_factory=dict)
    study: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    instance: dict[str, Any] = field(default_factory=dict)
    vrs: dict[str, str] = field(default_factory=dict)
    # Tags of the elements left out because their values could not be read.
    discarded: list[str] = field(default_factory=list)


def instance_attributes(ds: Dataset) -> InstanceAttributes:
    """Split ``ds`` (and its file meta) into the document's levels."""
    found = InstanceAttributes()
    for key, value in _readable(ds.file_meta, found):
        found.instance[key] = value
    for key, value in _readable(ds, found):
        if key in PATIENT_KEYWORDS:
            level = found.patient
        elif key in STUDY_KEYWORDS:
            level = found.study
        elif key in SERIES_KEYWORDS:
            level = found.series
        else:
            level = found.instance
        level[key] = value
    return found


def _readable(ds: Dataset, found: InstanceAttributes) -> Iterator[tuple[str, Any]]:
    """Each element's key and value. An element whose value (or a value in its
    items) cannot be read is left out and its tag noted, and the instance
    keeps the rest, as HealthImaging imports such a file with
    ELEMENTS_DISCARDED; the values the import rules judge are read first
    (``part10``), and refuse the file instead."""
    for tag in list(ds.keys()):
        vrs: dict[str, str] = {}
        try:
            elem = ds[tag]
            key = _key(elem, vrs)
            value = None if key == "PixelData" else element_value(elem, vrs)
        except Exception:  # pydicom raises many types for malformed values
            found.discarded.append(f"({tag.group:04X},{tag.element:04X})")
            continue
        found.vrs.update(vrs)
        yield key, value


def dataset_json(ds: Dataset, vrs: dict[str, str]) -> dict[str, Any]:
    return {_key(elem, vrs): element_value(elem, vrs) for elem in ds}


def _key(elem: DataElement, vrs: dict[str, str]) -> str:
    if elem.tag.is_private or not elem.keyword:
        key = f"{elem.tag:08X}"
        vrs[key] = elem.VR
        return key
    return elem.keyword


def element_value(elem: DataElement, vrs: dict[str, str]) -> Any:
    if elem.VR == "SQ":
        return [dataset_json(item, vrs) for item in elem.value] or None
    value = elem.value
    if value is None or value == "" or value == b"":
        return None
    if elem.VR in _BINARY_VRS or isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, MultiValue | list | tuple):
        values = [_scalar(v, elem.VR) for v in value]
        return values or None
    return _scalar(value, elem.VR)


def _scalar(value: Any, vr: str) -> Any:
    if vr in _STRING_NUMBER_VRS:
        return str(value)
    if isinstance(value, BaseTag):
        return f"{value:08X}"
    if isinstance(value, int | float | str):
        return value
    return str(value)
