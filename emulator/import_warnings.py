"""Warnings an import attaches to a file that still imported (behaviour doc
§3.1): the codes AWS publishes, so a client can switch on them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class WarningCode(IntEnum):
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


@dataclass(frozen=True)
class ImportWarning:
    code: WarningCode
    message: str

    def as_json(self) -> dict[str, Any]:
        return {
            "warning_reason_code": int(self.code),
            "type": self.code.name,
            "message": self.message,
        }
