"""Reading and checking one input file as the import does (behaviour doc §3.2).

A file that fails here is a customer error: it gets a FAILURE line with the
message of ``InvalidDicomFile`` and the job goes on with the other files. The
rules, their order and their messages are ``import_rules``', which
pre-flight validation applies too; this module reads the values they judge
from a pydicom dataset. Every check runs before any pixel is decoded.

Choices where AWS publishes nothing:

* Lengths are counted on the value as pydicom reads it (values joined by
  backslashes), and the value-length warning (INVALID_DICOM_VALUE_LENGTH) is
  given for the attributes with published limits only.
* Truncation is detected where a value is shorter than its declared length,
  or the file ends before its file meta information group length says; a
  file cut inside an element header loses that element silently, as pydicom
  reads it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import cast

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from emulator.worker.import_warnings import ImportWarning
from import_rules.rules import (
    IMAGE_ATTRIBUTES,
    LENGTH_LIMITS,
    NATIVE_TRANSFER_SYNTAXES,
    REQUIRED_UIDS,
    ExpectedWarning,
    Refusal,
    check_file_meta,
    check_image,
    check_length,
    check_part10,
    check_transfer_syntax,
    check_uid,
    frame_bits,
    truncated_element,
    unreadable,
)

_UNDEFINED_LENGTH = 0xFFFFFFFF


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
    try:
        return _checked(data)
    except Refusal as refusal:
        raise InvalidDicomFile(refusal.message) from None


def _checked(data: bytes) -> CheckedInstance:
    check_part10(data)
    check_file_meta(data, len(data))
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as error:  # whatever a malformed file makes the parser raise
        raise unreadable(error) from error
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
    found: list[ExpectedWarning | None] = [check_transfer_syntax(transfer_syntax)]
    _check_truncation(ds)
    uids = [_text(ds, keyword) for keyword in REQUIRED_UIDS]
    found.extend(check_uid(keyword, uid) for keyword, uid in zip(REQUIRED_UIDS, uids, strict=True))
    for keyword in LENGTH_LIMITS:
        value = _text(ds, keyword)
        if value is not None:
            found.append(check_length(keyword, value))
    if "PixelData" in ds:
        _check_image(ds, str(transfer_syntax))
    warnings = [ImportWarning(w.code, w.message) for w in found if w is not None]
    study, series, sop = (uid or "" for uid in uids)
    return CheckedInstance(ds, UID(transfer_syntax), study, series, sop, warnings=warnings)


def _check_truncation(ds: Dataset) -> None:
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if (
            isinstance(raw, RawDataElement)
            and raw.length != _UNDEFINED_LENGTH
            and raw.value is not None
            and len(raw.value) < raw.length
        ):
            raise truncated_element(int(tag), raw.length, len(raw.value))


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        elem = ds[keyword]
    except KeyError:
        return None
    except (ValueError, TypeError) as error:
        raise unreadable(f"DICOM attribute {keyword} has an invalid value: {error}") from error
    value = elem.value
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _check_image(ds: Dataset, transfer_syntax: str) -> None:
    # Freshly read and never accessed, so still raw (pydicom types it converted).
    pixel_data = cast(RawDataElement, ds.get_item("PixelData"))
    native = None
    if transfer_syntax in NATIVE_TRANSFER_SYNTAXES and pixel_data.length != _UNDEFINED_LENGTH:
        native = len(ds.PixelData)
    photometric = ds.get("PhotometricInterpretation")
    check_image(
        [_number(ds, keyword) for keyword in IMAGE_ATTRIBUTES],
        _number(ds, "SamplesPerPixel"),
        str(photometric) if photometric else None,
        _as_written(ds, "NumberOfFrames"),
        native,
    )


def _number(ds: Dataset, keyword: str) -> int | None:
    """A US value; None when absent or not one number."""
    try:
        value = ds.get(keyword)
    except (ValueError, TypeError):
        return None
    return value if isinstance(value, int) else None


def _as_written(ds: Dataset, keyword: str) -> str | None:
    """A value's text before pydicom converts it (which raises on a bad IS)."""
    element = ds.get_item(keyword)
    if element is None:
        return None
    value = element.value
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    text = "" if value is None else str(value)
    return text.strip("\x00 ") or None


def native_frame_bits(ds: Dataset) -> int:
    """Bits of one native frame."""
    return frame_bits(
        int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel") or 1),
        int(ds.BitsAllocated), ds.get("PhotometricInterpretation"),
    )
