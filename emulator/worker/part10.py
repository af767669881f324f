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
from import_rules.codes import FailureReason, failure_reason
from import_rules.dataset_checks import check_nesting, check_values_complete
from import_rules.rules import (
    IMAGE_ATTRIBUTES,
    LENGTH_LIMITS,
    NATIVE_TRANSFER_SYNTAXES,
    REQUIRED_UIDS,
    ExpectedWarning,
    Refusal,
    as_number,
    as_text,
    check_file_meta,
    check_image,
    check_length,
    check_part10,
    check_transfer_syntax,
    check_uid,
    frame_bits,
    invalid_value,
    too_deep,
    unreadable,
)

_UNDEFINED_LENGTH = 0xFFFFFFFF


class InvalidDicomFile(Exception):
    """The file cannot be imported; the message goes to its FAILURE line (an
    import job's) or its FailureReason (a STOW-RS answer's)."""

    def __init__(self, message: str, reason: FailureReason) -> None:
        super().__init__(message)
        self.reason = reason


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
        raise InvalidDicomFile(refusal.message, failure_reason(refusal.reason)) from None
    except Exception as error:  # a value pydicom cannot convert, in a way not foreseen
        unread = unreadable(error)
        raise InvalidDicomFile(unread.message, failure_reason(unread.reason)) from error


def _checked(data: bytes) -> CheckedInstance:
    check_part10(data)
    check_file_meta(data, len(data))
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except RecursionError:  # pydicom recurses per level of undefined length
        raise too_deep() from None
    except Exception as error:  # whatever a malformed file makes the parser raise
        raise unreadable(error) from error
    check_nesting(ds)
    transfer_syntax = attribute_text(ds.file_meta, "TransferSyntaxUID")
    found: list[ExpectedWarning | None] = [check_transfer_syntax(transfer_syntax)]
    # As the rules read it (None refused), whatever VR it was written with:
    # the frames are decoded by it.
    syntax = UID(transfer_syntax or "")
    ds.file_meta.add_new("TransferSyntaxUID", "UI", syntax)
    check_values_complete(ds)
    uids = [attribute_text(ds, keyword) for keyword in REQUIRED_UIDS]
    found.extend(check_uid(keyword, uid) for keyword, uid in zip(REQUIRED_UIDS, uids, strict=True))
    for keyword in LENGTH_LIMITS:
        value = attribute_text(ds, keyword)
        if value is not None:
            found.append(check_length(keyword, value))
    if "PixelData" in ds:
        _check_image(ds, syntax)
        _pixel_data_as_bytes(ds)
    warnings = [ImportWarning(w.code, w.message) for w in found if w is not None]
    study, series, sop = (uid or "" for uid in uids)
    return CheckedInstance(ds, syntax, study, series, sop, warnings=warnings)


def attribute_text(ds: Dataset, keyword: str) -> str | None:
    """A text value as the rules read it (import_rules.as_text).

    Raises:
        Refusal: pydicom cannot convert it.
    """
    try:
        elem = ds[keyword]
    except KeyError:
        return None
    except Exception as error:  # pydicom raises many types for malformed values
        raise invalid_value(keyword, error) from error
    return as_text(elem.value)


def _check_image(ds: Dataset, transfer_syntax: str) -> None:
    # Freshly read and never accessed, so still raw (pydicom types it converted).
    pixel_data = cast(RawDataElement, ds.get_item("PixelData"))
    native = None
    if transfer_syntax in NATIVE_TRANSFER_SYNTAXES and pixel_data.length != _UNDEFINED_LENGTH:
        native = len(pixel_data.value or b"")  # bytes, whatever VR it is written with
    check_image(
        [attribute_number(ds, keyword) for keyword in IMAGE_ATTRIBUTES],
        attribute_number(ds, "SamplesPerPixel"),
        attribute_text(ds, "PhotometricInterpretation"),
        attribute_as_written(ds, "NumberOfFrames"),
        native,
    )


def _pixel_data_as_bytes(ds: Dataset) -> None:
    """Pixel Data as the rules read it, its bytes, whatever VR it is written
    with: the frames are read from them."""
    element = ds.get_item("PixelData")
    if element.VR not in (None, "OB", "OW", "OB or OW"):
        ds.add_new("PixelData", "OB", element.value or b"")


def attribute_number(ds: Dataset, keyword: str) -> int | None:
    """A US value; None when absent or not one number."""
    try:
        return as_number(ds.get(keyword))
    except Exception:  # pydicom raises many types for malformed values
        return None


def attribute_as_written(ds: Dataset, keyword: str) -> str | None:
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
    """Bits of one native frame, from the attributes as the rules read them
    (which found Rows, Columns and BitsAllocated numbers)."""
    rows, columns, bits = (attribute_number(ds, keyword) or 0 for keyword in IMAGE_ATTRIBUTES)
    return frame_bits(rows, columns, attribute_number(ds, "SamplesPerPixel") or 1, bits,
                      attribute_text(ds, "PhotometricInterpretation"))
