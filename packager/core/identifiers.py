"""Does a metadata column name look like a patient identifier? Reports carry only de-identified
groups (site, sex, age band...): a column named in [data] group_by or --group-by that matches is
refused by name, before any of its values is read.

The match is on a normalised name (lower case, letters and digits only), so PatientName,
Patients_Name, patient-name and "Patient's Name" are one name; against
- the attributes of DICOM PS3.15 Annex E, Table E.1-1 (the Basic Application Level
  Confidentiality Profile, 2024b), less the patient characteristics its Retain Patient
  Characteristics Option keeps (age, sex, size, weight...), which are what subgroups are for;
- words that name or locate a person in the columns sites really write (surname, dob, mrn,
  nhs_number, email...), as whole words or glued into a longer name.
"""

from __future__ import annotations

import re

from packager.core.errors import UserError
from packager.core.schema import shown

# DICOM keywords of the attributes listed in PS3.15 Table E.1-1 (2024b).
_ANNEX_E_TEXT = """
    AccessionNumber AcquisitionComments AcquisitionContextSequence AcquisitionDate
    AcquisitionDateTime AcquisitionDeviceProcessingDescription AcquisitionFieldOfViewLabel
    AcquisitionProtocolDescription AcquisitionTime AcquisitionUID ActualHumanPerformersSequence
    AdditionalPatientHistory AddressTrial AdmissionID AdmittingDate
    AdmittingDiagnosesCodeSequence AdmittingDiagnosesDescription AdmittingTime
    AffectedSOPInstanceUID Allergies AnnotationGroupDescription AnnotationGroupLabel
    AnnotationGroupUID ApprovalStatusDateTime Arbitrary AssertionDateTime
    AssertionExpirationDateTime AttributeModificationDateTime AuthorObserverSequence
    BarcodeValue BeamDescription BeamHoldTransitionDateTime BolusDescription BranchOfService
    CalibrationDate CalibrationDateTime CalibrationTime CameraOwnerName CassetteID
    CertificateOfSigner CertifiedTimestamp ClinicalTrialCoordinatingCenterName
    ClinicalTrialProtocolEthicsCommitteeApprovalNumber ClinicalTrialProtocolEthicsCommitteeName
    ClinicalTrialProtocolID ClinicalTrialProtocolName ClinicalTrialSeriesDescription
    ClinicalTrialSeriesID ClinicalTrialSiteID ClinicalTrialSiteName ClinicalTrialSponsorName
    ClinicalTrialSubjectID ClinicalTrialSubjectReadingID ClinicalTrialTimePointDescription
    ClinicalTrialTimePointID CommentsOnRadiationDose CommentsOnThePerformedProcedureStep
    CompensatorDescription ConcatenationUID ConceptualVolumeCombinationDescription
    ConceptualVolumeDescription ConceptualVolumeUID
    ConfidentialityConstraintOnPatientDataDescription ConstituentConceptualVolumeUID
    ConsultingPhysicianIdentificationSequence ConsultingPhysicianName ContainerComponentID
    ContainerDescription ContainerIdentifier ContentCreatorIdentificationCodeSequence
    ContentCreatorName ContentDate ContentSequence ContentTime ContextGroupLocalVersion
    ContextGroupVersion ContrastBolusAgent ContrastBolusStartTime ContrastBolusStopTime
    ContributionDateTime ContributionDescription CountryOfResidence CreationDate CreationTime
    CurrentObserverTrial CurrentPatientLocation CurveDate CurveTime
    CustodialOrganizationSequence DataSetTrailingPadding Date
    DateOfDocumentOrVerbalTransactionTrial DateOfInstallation DateOfLastCalibration
    DateOfLastDetectorCalibration DateOfManufacture DateOfSecondaryCapture DateTime
    DateTimeOfLastCalibration DecayCorrectionDateTime DecompositionDescription
    DerivationDescription DestinationAE DetectorID DeviceAlternateIdentifier DeviceDescription
    DeviceLabel DeviceSerialNumber DeviceSettingDescription DeviceUID DigitalSignatureDateTime
    DigitalSignatureUID DigitalSignaturesSequence DimensionOrganizationUID DischargeDate
    DischargeDiagnosisDescription DischargeTime DisplacementReferenceLabel DistributionAddress
    DistributionName DoseReferenceDescription DoseReferenceUID DosimetricObjectiveUID
    EffectiveDateTime EncapsulatedDocument EndAcquisitionDateTime EntityDescription EntityLabel
    EntityLongLabel EntityName EquipmentFrameOfReferenceDescription
    EthicsCommitteeApprovalEffectivenessEndDate EthicsCommitteeApprovalEffectivenessStartDate
    EthnicGroup ExclusionStartDateTime ExpectedCompletionDateTime FailedSOPInstanceUIDList
    FiducialUID FillerOrderNumberImagingServiceRequest FilterLookupTableDescription
    FindingsGroupRecordingDateTrial FindingsGroupRecordingTimeTrial FirstTreatmentDate
    FixationDeviceDescription FlowIdentifier FlowIdentifierSequence FractionGroupDescription
    FractionationNotes FrameAcquisitionDateTime FrameComments FrameOfReferenceUID
    FrameOriginTimestamp FrameReferenceDateTime FunctionalSyncPulse GPSAltitude GPSAltitudeRef
    GPSAreaInformation GPSDOP GPSDateStamp GPSDestBearing GPSDestBearingRef GPSDestDistance
    GPSDestDistanceRef GPSDestLatitude GPSDestLatitudeRef GPSDestLongitude GPSDestLongitudeRef
    GPSDifferential GPSImgDirection GPSImgDirectionRef GPSLatitude GPSLatitudeRef GPSLongitude
    GPSLongitudeRef GPSMapDatum GPSMeasureMode GPSProcessingMethod GPSSatellites GPSSpeed
    GPSSpeedRef GPSStatus GPSTimeStamp GPSTrack GPSTrackRef GPSVersionID GantryID GeneratorID
    GraphicAnnotationSequence HL7DocumentEffectiveTime HangingProtocolCreationDateTime
    HumanPerformerName HumanPerformerOrganization IconImageSequence IdentifyingComments
    ImageComments ImagePresentationComments ImagingServiceRequestComments
    ImpedanceMeasurementDateTime Impressions InformationIssueDateTime InstanceCoercionDateTime
    InstanceCreationDate InstanceCreationTime InstanceCreatorUID InstanceOriginStatus
    InstitutionAddress InstitutionCodeSequence InstitutionName InstitutionalDepartmentName
    InstitutionalDepartmentTypeCodeSequence InstructionPerformedDateTime
    InsurancePlanIdentification IntendedFractionStartTime IntendedPhaseEndDate
    IntendedPhaseStartDate IntendedRecipientsOfResultsIdentificationSequence InterlockDateTime
    InterlockDescription InterlockOriginDescription InterpretationApprovalDate
    InterpretationApprovalTime InterpretationApproverSequence InterpretationAuthor
    InterpretationDiagnosisDescription InterpretationID InterpretationIDIssuer
    InterpretationRecordedDate InterpretationRecordedTime InterpretationRecorder
    InterpretationText InterpretationTranscriber InterpretationTranscriptionDate
    InterpretationTranscriptionTime InterventionDrugStartTime InterventionDrugStopTime
    IrradiationEventUID IssueDateOfImagingServiceRequest IssueTimeOfImagingServiceRequest
    IssuerOfAdmissionID IssuerOfAdmissionIDSequence IssuerOfClinicalTrialProtocolID
    IssuerOfClinicalTrialSeriesID IssuerOfClinicalTrialSiteID IssuerOfClinicalTrialSubjectID
    IssuerOfClinicalTrialSubjectReadingID IssuerOfClinicalTrialTimePointID IssuerOfPatientID
    IssuerOfServiceEpisodeID IssuerOfServiceEpisodeIDSequence
    IssuerOfTheContainerIdentifierSequence IssuerOfTheSpecimenIdentifierSequence LabelText
    LargePaletteColorLookupTableUID LastMenstrualDate LensMake LensModel LensSerialNumber
    LensSpecification LongDeviceDescription MAC MakerNote ManufacturerDeviceClassUID
    ManufacturerDeviceIdentifier MediaStorageSOPInstanceUID MedicalAlerts MedicalRecordLocator
    MilitaryRank ModifiedAttributesSequence ModifiedImageDate ModifiedImageDescription
    ModifiedImageTime ModifyingDeviceID ModifyingSystem MostRecentTreatmentDate
    MultienergyAcquisitionDescription MultiplexGroupUID NameOfPhysiciansReadingStudy
    NamesOfIntendedRecipientsOfResults NetworkID NonconformingDataElementValue
    NonconformingModifiedAttributesSequence ObservationDateTime ObservationDateTrial
    ObservationStartDateTime ObservationSubjectUIDTrial ObservationTimeTrial ObservationUID
    Occupation OperatorIdentificationSequence OperatorsName OrderCallbackPhoneNumber
    OrderCallbackTelecomInformation OrderEnteredBy OrderEntererLocation
    OriginalAttributesSequence Originator OtherClinicalTrialProtocolIDsSequence OtherPatientIDs
    OtherPatientIDsSequence OtherPatientNames OverlayDate OverlayTime OverrideDateTime
    PaletteColorLookupTableUID ParticipantSequence ParticipationDateTime PatientAddress
    PatientAge PatientBirthDate PatientBirthName PatientBirthTime PatientComments PatientID
    PatientInstitutionResidence PatientInsurancePlanCodeSequence PatientMotherBirthName
    PatientName PatientPrimaryLanguageCodeSequence PatientPrimaryLanguageModifierCodeSequence
    PatientReligiousPreference PatientSetupPhotoDescription PatientSetupUID PatientSex
    PatientSexNeutered PatientSize PatientState PatientTelecomInformation
    PatientTelephoneNumbers PatientTransportArrangements
    PatientTreatmentPreparationMethodDescription
    PatientTreatmentPreparationProcedureParameterDescription PatientWeight PerformedLocation
    PerformedProcedureStepDescription PerformedProcedureStepEndDate
    PerformedProcedureStepEndDateTime PerformedProcedureStepEndTime PerformedProcedureStepID
    PerformedProcedureStepStartDate PerformedProcedureStepStartDateTime
    PerformedProcedureStepStartTime PerformedStationAETitle
    PerformedStationGeographicLocationCodeSequence PerformedStationName
    PerformedStationNameCodeSequence PerformingPhysicianIdentificationSequence
    PerformingPhysicianName PersonAddress PersonIdentificationCodeSequence PersonName
    PersonTelecomInformation PersonTelephoneNumbers PhysicianApprovingInterpretation
    PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence
    PhysiciansReadingStudyIdentificationSequence PlacerOrderNumberImagingServiceRequest PlateID
    PositionAcquisitionTemplateDescription PositionAcquisitionTemplateName PreMedication
    PregnancyStatus PrescriptionDescription PrescriptionNotes PrescriptionNotesSequence
    PresentationCreationDate PresentationCreationTime PresentationDisplayCollectionUID
    PresentationSequenceCollectionUID PriorTreatmentDoseDescription
    ProcedureStepCancellationDateTime ProductExpirationDateTime ProtocolName PyramidDescription
    PyramidLabel PyramidUID ROICreatorSequence ROIDateTime ROIDescription
    ROIGenerationDescription ROIInterpreter ROIInterpreterSequence ROIName
    ROIObservationDateTime ROIObservationDescription ROIObservationLabel RTAccessoryDeviceSlotID
    RTAccessoryHolderSlotID RTPhysicianIntentNarrative RTPlanDate RTPlanDescription RTPlanLabel
    RTPlanName RTPlanTime RTPrescriptionLabel RTToleranceSetLabel RTTreatmentApproachLabel
    RTTreatmentPhaseUID RadiationDoseIdentificationLabel RadiationDoseInVivoMeasurementLabel
    RadiationGenerationModeDescription RadiationGenerationModeLabel
    RadiopharmaceuticalStartDateTime RadiopharmaceuticalStartTime
    RadiopharmaceuticalStopDateTime RadiopharmaceuticalStopTime ReasonForOmissionDescription
    ReasonForRequestedProcedureCodeSequence ReasonForStudy ReasonForSuperseding
    ReasonForTheAttributeModification ReasonForTheImagingServiceRequest
    ReasonForTheRequestedProcedure ReasonForVisit ReasonForVisitCodeSequence ReceivingAE
    RecordedRTControlPointDateTime ReferencedConceptualVolumeUID ReferencedDateTime
    ReferencedDigitalSignatureSequence ReferencedDoseReferenceUID
    ReferencedDosimetricObjectiveUID ReferencedFiducialsUID ReferencedFrameOfReferenceUID
    ReferencedImageSequence ReferencedObservationUIDTrial ReferencedPatientAliasSequence
    ReferencedPatientPhotoSequence ReferencedPatientSequence
    ReferencedPerformedProcedureStepSequence ReferencedSOPInstanceMACSequence
    ReferencedSOPInstanceUID ReferencedSOPInstanceUIDInFile ReferencedStudySequence
    ReferencedTreatmentPositionGroupUID ReferringPhysicianAddress
    ReferringPhysicianIdentificationSequence ReferringPhysicianName
    ReferringPhysicianTelephoneNumbers RegionOfResidence RelatedFrameOfReferenceUID
    RequestAttributesSequence RequestedContrastAgent RequestedProcedureComments
    RequestedProcedureDescription RequestedProcedureID RequestedProcedureLocation
    RequestedSOPInstanceUID RequestedSeriesDescription RequestingAE RequestingPhysician
    RequestingService RespiratoryMotionCompensationTechniqueDescription ResponsibleOrganization
    ResponsiblePerson ResultsComments ResultsDistributionListSequence ResultsID ResultsIDIssuer
    RetrieveAETitle ReviewDate ReviewTime ReviewerName SOPAuthorizationDateTime SOPInstanceUID
    SafePositionExitDate SafePositionExitTime SafePositionReturnDate SafePositionReturnTime
    ScheduledAdmissionDate ScheduledAdmissionTime ScheduledDischargeDate ScheduledDischargeTime
    ScheduledHumanPerformersSequence ScheduledPatientInstitutionResidence
    ScheduledPerformingPhysicianIdentificationSequence ScheduledPerformingPhysicianName
    ScheduledProcedureStepDescription ScheduledProcedureStepEndDate
    ScheduledProcedureStepEndTime ScheduledProcedureStepExpirationDateTime
    ScheduledProcedureStepID ScheduledProcedureStepLocation
    ScheduledProcedureStepModificationDateTime ScheduledProcedureStepStartDate
    ScheduledProcedureStepStartDateTime ScheduledProcedureStepStartTime ScheduledStationAETitle
    ScheduledStationGeographicLocationCodeSequence ScheduledStationName
    ScheduledStationNameCodeSequence ScheduledStudyLocation ScheduledStudyLocationAETitle
    ScheduledStudyStartDate ScheduledStudyStartTime ScheduledStudyStopDate
    ScheduledStudyStopTime SelectorAEValue SelectorASValue SelectorDAValue SelectorDTValue
    SelectorLOValue SelectorLTValue SelectorOBValue SelectorPNValue SelectorSHValue
    SelectorSTValue SelectorTMValue SelectorUNValue SelectorURValue SelectorUTValue SeriesDate
    SeriesDescription SeriesInstanceUID SeriesTime ServiceEpisodeDescription ServiceEpisodeID
    SetupTechniqueDescription ShieldingDeviceDescription SlideIdentifier SmokingStatus
    SourceConceptualVolumeUID SourceEndDateTime SourceFrameOfReferenceUID SourceIdentifier
    SourceImageSequence SourceManufacturer SourceOfPreviousValues SourceSerialNumber
    SourceStartDateTime SourceStrengthReferenceDate SourceStrengthReferenceTime SpecialNeeds
    SpecimenAccessionNumber SpecimenDetailedDescription SpecimenIdentifier
    SpecimenPreparationSequence SpecimenShortDescription SpecimenUID StartAcquisitionDateTime
    StationAETitle StationName StorageMediaFileSetUID StructureSetDate StructureSetDescription
    StructureSetLabel StructureSetName StructureSetTime StudyArrivalDate StudyArrivalTime
    StudyComments StudyCompletionDate StudyCompletionTime StudyDate StudyDescription StudyID
    StudyIDIssuer StudyInstanceUID StudyReadDate StudyReadTime StudyTime StudyVerifiedDate
    StudyVerifiedTime SubstanceAdministrationDateTime SynchronizationFrameOfReferenceUID
    TargetUID TelephoneNumberTrial TemplateExtensionCreatorUID TemplateExtensionOrganizationUID
    TemplateLocalVersion TemplateVersion TextComments TextString Time
    TimeOfDocumentCreationOrVerbalTransactionTrial TimeOfLastCalibration
    TimeOfLastDetectorCalibration TimeOfSecondaryCapture TimezoneOffsetFromUTC TopicAuthor
    TopicKeywords TopicSubject TopicTitle TrackingUID TransactionUID
    TransducerIdentificationSequence TreatmentControlPointDate TreatmentControlPointTime
    TreatmentDate TreatmentMachineName TreatmentPositionGroupLabel TreatmentPositionGroupUID
    TreatmentSessionUID TreatmentSite TreatmentSites TreatmentTechniqueNotes TreatmentTime
    TreatmentToleranceViolationDateTime TreatmentToleranceViolationDescription UDISequence UID
    UniqueDeviceIdentifier UserContentLabel UserContentLongLabel
    VerbalSourceIdentifierCodeSequenceTrial VerbalSourceTrial VerificationDateTime
    VerifyingObserverIdentificationCodeSequence VerifyingObserverName VerifyingObserverSequence
    VerifyingOrganization VisitComments WaveformFilterDescription XRayDetectorID
    XRayDetectorLabel XRaySourceID
"""
ANNEX_E = frozenset(_ANNEX_E_TEXT.split())
# Kept by the Retain Patient Characteristics Option (PS3.15 E.3.4): usable as subgroups.
CHARACTERISTICS = frozenset(
    {
        "PatientAge",
        "PatientSex",
        "PatientSexNeutered",
        "PatientSize",
        "PatientWeight",
        "EthnicGroup",
        "SmokingStatus",
        "PregnancyStatus",
    }
)
# Whole words (of a snake_case, kebab-case or CamelCase name) that make a column an identifier.
_WORDS_TEXT = """
    id ids uid uuid guid dob ssn sin mrn nhs chi zip date dates datetime time timestamp
    name names surname surnames forename forenames initials maiden nickname birth born
    birthday birthdate address street city town postcode
    zipcode postal phone telephone tel mobile cell fax email mail telecom accession passport
    licence license insurance ip mac serial number num contact relative kin
"""
WORDS = frozenset(_WORDS_TEXT.split())
# Distinctive fragments that identify even when glued into one word (dateofbirth, mrnnumber).
FRAGMENTS = (
    "name",
    "birth",
    "mrn",
    "ssn",
    "nhs",
    "email",
    "phone",
    "address",
    "accession",
    "postcode",
    "zipcode",
    "passport",
    "socialsecurity",
    "medicalrecord",
    "insurance",
    "telecom",
    "uid",
)


def normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _words(name: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+", name)]


def _keys(keyword: str) -> set[str]:
    """A keyword's normalised spellings: PatientName also as Patient's Name (PatientsName)."""
    key = normalised(keyword)
    keys = {key}
    for person in ("patient", "person", "operator", "physician"):
        if key.startswith(person) and not key.startswith(person + "s"):
            keys.add(person + "s" + key[len(person) :])
    return keys


_ANNEX_E_KEYS = {k: kw for kw in ANNEX_E - CHARACTERISTICS for k in _keys(kw)}
_CHARACTERISTIC_KEYS = {k for kw in CHARACTERISTICS for k in _keys(kw)}


def identifier_reason(column: str) -> str | None:
    """Why `column` looks like a patient identifier, or None when it does not."""
    key = normalised(column)
    if key in _CHARACTERISTIC_KEYS:
        return None
    if key in _ANNEX_E_KEYS:
        return f"DICOM PS3.15 Annex E attribute {_ANNEX_E_KEYS[key]}"
    word = next((w for w in _words(column) if w in WORDS), None)
    if word is not None:
        return f"the word '{word}' names, dates or locates a person"
    part = next((f for f in FRAGMENTS if f in key), None)
    if part is not None:
        return f"'{part}' names, dates or locates a person"
    return None


def refuse_identifier(column: str, where: str) -> None:
    """A one-line refusal of a group column that looks like an identifier (names it only: no
    value of it has been read)."""
    reason = identifier_reason(column)
    if reason is not None:
        raise UserError(
            f"{where} '{shown(column)}' looks like a patient identifier ({reason}); reports "
            "never carry identifiers: group by de-identified categories such as site or age_band"
        )
