"""What of the installed botocore model this service honours, declared in one
place so that a new operation or request member in a botocore upgrade is
noticed (``tests/emulator/test_model_coverage.py``) instead of being silently
accepted and ignored.

Paths are ``Operation.member.nested`` with list levels left out. A top-level
member is honoured when its handler (the backend method named after the
operation) takes it as a parameter and it is not listed below; a nested
member is honoured when it is named in ``HONOURED_NESTED``.
"""

from __future__ import annotations

HONOURED_NESTED: frozenset[str] = frozenset(
    {
        "CopyImageSet.copyImageSetInformation.sourceImageSet",
        "CopyImageSet.copyImageSetInformation.sourceImageSet.latestVersionId",
        "CopyImageSet.copyImageSetInformation.sourceImageSet.DICOMCopies",
        "CopyImageSet.copyImageSetInformation.sourceImageSet.DICOMCopies.copiableAttributes",
        "CopyImageSet.copyImageSetInformation.destinationImageSet",
        "CopyImageSet.copyImageSetInformation.destinationImageSet.imageSetId",
        "CopyImageSet.copyImageSetInformation.destinationImageSet.latestVersionId",
        "GetImageFrame.imageFrameInformation.imageFrameId",
        "SearchImageSets.searchCriteria.filters",
        "SearchImageSets.searchCriteria.filters.values",
        "SearchImageSets.searchCriteria.filters.values.DICOMPatientId",
        "SearchImageSets.searchCriteria.filters.values.DICOMAccessionNumber",
        "SearchImageSets.searchCriteria.filters.values.DICOMStudyId",
        "SearchImageSets.searchCriteria.filters.values.DICOMStudyInstanceUID",
        "SearchImageSets.searchCriteria.filters.values.DICOMSeriesInstanceUID",
        "SearchImageSets.searchCriteria.filters.values.createdAt",
        "SearchImageSets.searchCriteria.filters.values.updatedAt",
        "SearchImageSets.searchCriteria.filters.values.DICOMStudyDateAndTime",
        "SearchImageSets.searchCriteria.filters.values.DICOMStudyDateAndTime.DICOMStudyDate",
        "SearchImageSets.searchCriteria.filters.values.DICOMStudyDateAndTime.DICOMStudyTime",
        "SearchImageSets.searchCriteria.filters.values.isPrimary",
        "SearchImageSets.searchCriteria.filters.operator",
        "SearchImageSets.searchCriteria.sort",
        "SearchImageSets.searchCriteria.sort.sortOrder",
        "SearchImageSets.searchCriteria.sort.sortField",
        "UpdateImageSetMetadata.updateImageSetMetadataUpdates.DICOMUpdates",
        "UpdateImageSetMetadata.updateImageSetMetadataUpdates.DICOMUpdates.removableAttributes",
        "UpdateImageSetMetadata.updateImageSetMetadataUpdates.DICOMUpdates.updatableAttributes",
        "UpdateImageSetMetadata.updateImageSetMetadataUpdates.revertToVersionId",
        "StartDICOMImportJob.importConfiguration.dicomJsonMetadataImportConfiguration",
        "StartDICOMImportJob.importConfiguration.dicomJsonMetadataImportConfiguration"
        ".dicomMetadataMappings",
        "StartDICOMImportJob.importConfiguration.dicomJsonMetadataImportConfiguration"
        ".dicomMetadataMappings.studyInstanceUID",
        "StartDICOMImportJob.importConfiguration.dicomJsonMetadataImportConfiguration"
        ".dicomMetadataMappings.seriesInstanceUID",
        "StartDICOMImportJob.importConfiguration.dicomJsonMetadataImportConfiguration"
        ".dicomMetadataMappings.metadataFilePath",
    }
)

# Accepted (the request validates and the value is recorded or returned) but
# deliberately without effect, each with the reason.
DELIBERATELY_UNSUPPORTED: dict[str, str] = {
    "CreateDatastore.kmsKeyArn": "recorded and returned; nothing is encrypted locally",
    "CreateDatastore.lambdaAuthorizerArn": (
        "recorded and returned; there is no Lambda to call, requests are checked by SigV4 only"
    ),
    "StartDICOMImportJob.dataAccessRoleArn": (
        "recorded and returned; no IAM role is assumed, the service reads S3 with its own keys"
    ),
    "StartDICOMImportJob.inputOwnerAccountId": (
        "recorded; there is one account locally, so no bucket-owner check"
    ),
}
