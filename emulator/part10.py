"""Reading and checking one input file as the import does (behaviour doc §3.2).

A file that fails here is a customer error: it gets a FAILURE line with the
message of ``InvalidDicomFile`` and the job goes on with the other files.

Choices where AWS publishes nothing:

* A UID must be digits and dots with no empty component and at most 256
  characters (the published StudyInstanceUID limit, applied to the series and
  SOP instance UIDs too). Longer than DICOM's 64 characters, or a component
  with a leading zero, imports with an INVALID_UID_FORMAT warning: such UIDs
  are common in real archives.
* Lengths are counted on the value as written (values joined by backslashes).
* Native pixel data may carry the one padding byte that makes it even; any
  other difference from Rows x Columns x SamplesPerPixel x BitsAllocated/8 x
  NumberOfFrames fails the file (YBR_FULL_422 counts two samples per pixel,
  as it is stored subsampled).
* Truncation is detected where a value is shorter than its declared length;
  a file cut inside an element header loses that element silently, as pydicom
  reads it.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MPEGTransferSyntaxes,
    RLELossless,
)

from emulator.import_warnings import ImportWarning, WarningCode

JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"

ACCEPTED_TRANSFER_SYNTAXES = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEG_LOSSLESS,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEG2000Lossless,
        JPEG2000,
        HTJ2KLossless,
        HTJ2KLosslessRPCL,
        HTJ2K,
        RLELossless,
        *MPEGTransferSyntaxes,
    }
)

# Published limits (characters); an import fails above them.
LENGTH_LIMITS: dict[str, int] = {
    "PatientName": 256,
    "PatientID": 256,
    "PatientBirthDate": 18,
    "PatientSex": 16,
    "StudyInstanceUID": 256,
    "StudyID": 16,
    "StudyDescription": 64,
    "AccessionNumber": 256,
    "StudyDate": 18,
    "StudyTime": 28,
}

REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
MAX_UID_LENGTH = 256
DICOM_UID_LENGTH = 64
# Attributes pixel data cannot be read without.
PIXEL_DESCRIPTION = ("Rows", "Columns", "BitsAllocated")

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_LEADING_ZERO = re.compile(r"(^|\.)0[0-9]")


class InvalidDicomFile(Exception):
    """The file cannot be imported; the message goes to its FAILURE line."""


@dataclass
class CheckedInstance:
    dataset: Dataset
    transfer_syntax_uid: UID
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    warnings: list[ImportWarning] = field(default_factory=list)


def read_instance(data: bytes) -> CheckedInstance:
    """Parse ``data`` as DICOM Part 10 and check it, or raise InvalidDicomFile."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise InvalidDicomFile(
            "Not a DICOM Part 10 file: the 'DICM' prefix is missing after the 128-byte preamble"
        )
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as error:  # whatever a malformed file makes the parser raise
        raise InvalidDicomFile(f"The DICOM file could not be parsed: {error}") from error
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
    if not transfer_syntax:
        raise InvalidDicomFile("DICOM attribute TransferSyntaxUID does not exist")
    if transfer_syntax not in ACCEPTED_TRANSFER_SYNTAXES:
        raise InvalidDicomFile(f"Transfer syntax {transfer_syntax} is not supported")
    _check_truncation(ds)
    found: list[ImportWarning] = []
    uids = [_checked_uid(ds, keyword, found) for keyword in REQUIRED_UIDS]
    _check_lengths(ds)
    if "PixelData" in ds:
        _check_pixel_data(ds, UID(transfer_syntax))
    return CheckedInstance(ds, UID(transfer_syntax), *uids, warnings=found)


def _check_truncation(ds: Dataset) -> None:
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if (
            isinstance(raw, RawDataElement)
            and raw.length != 0xFFFFFFFF
            and raw.value is not None
            and len(raw.value) < raw.length
        ):
            raise InvalidDicomFile(
                f"The DICOM file is truncated: element {tag} declares {raw.length} bytes "
                f"but only {len(raw.value)} follow"
            )


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        elem = ds[keyword]
    except KeyError:
        return None
    except (ValueError, TypeError) as error:
        message = f"DICOM attribute {keyword} has an invalid value: {error}"
        raise InvalidDicomFile(message) from error
    value = elem.value
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _checked_uid(ds: Dataset, keyword: str, found: list[ImportWarning]) -> str:
    uid = _text(ds, keyword)
    if uid is None:
        raise InvalidDicomFile(f"DICOM attribute {keyword} does not exist")
    if not _UID.fullmatch(uid) or len(uid) > MAX_UID_LENGTH:
        raise InvalidDicomFile(f"DICOM attribute {keyword} is not a valid UID: {uid!r}")
    if len(uid) > DICOM_UID_LENGTH or _LEADING_ZERO.search(uid):
        found.append(
            ImportWarning(
                WarningCode.INVALID_UID_FORMAT,
                f"DICOM attribute {keyword} is longer than {DICOM_UID_LENGTH} characters "
                "or has a component with a leading zero",
            )
        )
    return uid


def _check_lengths(ds: Dataset) -> None:
    for keyword, limit in LENGTH_LIMITS.items():
        value = _text(ds, keyword)
        if value is not None and len(value) > limit:
            raise InvalidDicomFile(
                f"DICOM attribute {keyword} is {len(value)} characters long; the maximum is {limit}"
            )


def _check_pixel_data(ds: Dataset, transfer_syntax: UID) -> None:
    for keyword in PIXEL_DESCRIPTION:
        try:
            value = ds.get(keyword)
        except (ValueError, TypeError) as error:
            raise InvalidDicomFile(
                f"DICOM attribute {keyword} has an invalid value: {error}"
            ) from error
        if value is None or not isinstance(value, int):
            raise InvalidDicomFile(
                f"DICOM attribute {keyword} does not exist; it is required with PixelData"
            )
    if transfer_syntax.is_encapsulated:
        return
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        expected = (native_frame_bits(ds) * frames + 7) // 8
    except (ValueError, TypeError) as error:
        raise InvalidDicomFile(f"NumberOfFrames or SamplesPerPixel is invalid: {error}") from error
    actual = len(ds.PixelData)
    if actual not in (expected, expected + expected % 2):
        raise InvalidDicomFile(
            f"Pixel data length {actual} does not match Rows x Columns x SamplesPerPixel x "
            f"BitsAllocated/8 x NumberOfFrames = {expected}"
        )


def native_frame_bits(ds: Dataset) -> int:
    """Bits of one native frame. YBR_FULL_422 is stored subsampled: two
    samples per pixel, not three."""
    samples = int(ds.get("SamplesPerPixel") or 1)
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        samples = 2
    return int(ds.Rows) * int(ds.Columns) * samples * int(ds.BitsAllocated)
