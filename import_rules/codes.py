"""The codes a file's fate is told in: why validation refused it, and which
warning HealthImaging attaches to a file it imported anyway."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ReasonCode(StrEnum):
    """Why validation held a file back. Every code but the duplicate is one
    the import refuses the file for too (docs/import-rules.md)."""

    NOT_P10 = "not_p10"
    TRUNCATED = "truncated"
    UNREADABLE = "unreadable"
    SEQUENCE_TOO_DEEP = "sequence_too_deep"
    NO_TRANSFER_SYNTAX = "no_transfer_syntax"
    MISSING_UID = "missing_uid"
    ATTRIBUTE_TOO_LONG = "attribute_too_long"
    INVALID_IMAGE_ATTRIBUTE = "invalid_image_attribute"
    IMAGE_TOO_LARGE = "image_too_large"
    PIXEL_DATA_SIZE_MISMATCH = "pixel_data_size_mismatch"
    # Another file of the same run carries the same SOP instance.
    DUPLICATE_SOP_INSTANCE = "duplicate_sop_instance"


class WarningCode(IntEnum):
    """The warnings an import attaches to a file it imported (AWS's published
    codes, so a client can switch on them)."""

    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    TRANSCODING_EXCEPTION = 0xB100
    FRAMES_EXTRACTION_FAILURE = 0xB110
    FRAME_NUMBER_MISMATCH = 0xB111
    INVALID_OFFSET_TABLE = 0xB112
    UNSUPPORTED_TRANSFER_SYNTAX = 0xB120
    INVALID_UID_FORMAT = 0xB201
    INVALID_DICOM_VALUE_LENGTH = 0xB202
    OTHER = 0xBFFF


def warning_label(code: WarningCode) -> str:
    """As the report's ``warning_codes`` spells a warning read from a job's
    output, so expected and actual warnings compare as text."""
    return f"{code.name}(0x{int(code):04X})"


class FailureReason(IntEnum):
    """Why a STOW-RS request did not store an instance: its FailureReason
    (0008,1197) in the Store Instances Response (PS3.18 Table I.2-2 gives the
    ranges; the codes within them are this project's choice, written in
    docs/healthimaging.md)."""

    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    # Another study than the request path names (0xA901 as Azure's DICOM
    # service also answers it).
    STUDY_INSTANCE_UID_MISMATCH = 0xA901
    CANNOT_UNDERSTAND = 0xC000


# The import rules' refusals, as a STOW-RS answer names them: a file that is
# not readable DICOM cannot be understood; a readable one that breaks a rule
# of its content does not match its SOP class.
_REFUSAL_FAILURE_REASONS = {
    ReasonCode.MISSING_UID: FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    ReasonCode.ATTRIBUTE_TOO_LONG: FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    ReasonCode.INVALID_IMAGE_ATTRIBUTE: FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    ReasonCode.IMAGE_TOO_LARGE: FailureReason.OUT_OF_RESOURCES,
    ReasonCode.PIXEL_DATA_SIZE_MISMATCH: FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
}


def failure_reason(refusal: ReasonCode) -> FailureReason:
    """The FailureReason a STOW-RS answer gives a file the import refuses
    with ``refusal``."""
    return _REFUSAL_FAILURE_REASONS.get(refusal, FailureReason.CANNOT_UNDERSTAND)
