"""Each rule of an import, as a pure function over the values a reader found.

A check returns the warning the import attaches to the file (or None) and
raises :class:`Refusal` for a file the import refuses; the refusal's message is
the one the local service writes on the file's FAILURE line and validation
reports. Callers apply the checks in the order docs/import-rules.md lists
them, so the first rule a file breaks is its reason on both sides.

Sources: AWS's published element constraints, warning codes and transfer
syntaxes, newest first (UIDs up to 256 characters, StudyID and
StudyDescription up to 256, unsupported transfer syntaxes imported as a blob).
Where AWS publishes nothing (the largest image, frame counts) the choice is
written down here and in docs/import-rules.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.multival import MultiValue

from import_rules.codes import ReasonCode, WarningCode, warning_label

NATIVE_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    }
)
# What HealthImaging transcodes or keeps as it came; any other transfer
# syntax, unknown or private ones included, imports with its pixel data as one
# blob and an UNSUPPORTED_TRANSFER_SYNTAX warning.
SUPPORTED_TRANSFER_SYNTAXES = NATIVE_TRANSFER_SYNTAXES | frozenset(
    f"1.2.840.10008.1.2.{suffix}"
    for suffix in (
        "4.50", "4.51", "4.57", "4.70",  # JPEG baseline, extended, lossless
        "4.80", "4.81",  # JPEG-LS
        "4.90", "4.91",  # JPEG 2000
        "4.201", "4.202", "4.203",  # HTJ2K
        "5",  # RLE
        "4.100", "4.100.1", "4.101", "4.101.1",  # MPEG-2 (and fragmentable)
        "4.102", "4.102.1", "4.103", "4.103.1", "4.104", "4.104.1",  # H.264
        "4.105", "4.105.1", "4.106", "4.106.1",
        "4.107", "4.108",  # HEVC
    )
)

REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
# The published StudyInstanceUID limit, which AWS applies to the series and
# SOP instance UIDs too; past DICOM's own 64 a UID imports with a warning.
MAX_UID_LENGTH = 256
DICOM_UID_LENGTH = 64
_DICOM_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


@dataclass(frozen=True)
class LengthLimit:
    """Characters: ``dicom`` is what the attribute's VR allows (for PN, per
    component group), ``healthimaging`` what the import accepts. Between the
    two the file imports with INVALID_DICOM_VALUE_LENGTH."""

    dicom: int
    healthimaging: int


# The attributes AWS publishes limits for (DA and TM allow the lengths of a
# range query: 18 and 28). StudyInstanceUID's is MAX_UID_LENGTH, checked with
# the other UIDs.
LENGTH_LIMITS: dict[str, LengthLimit] = {
    "PatientName": LengthLimit(64, 256),
    "PatientID": LengthLimit(64, 256),
    "PatientBirthDate": LengthLimit(8, 18),
    "PatientSex": LengthLimit(16, 16),
    "StudyID": LengthLimit(16, 256),
    "StudyDescription": LengthLimit(64, 256),
    "AccessionNumber": LengthLimit(16, 256),
    "StudyDate": LengthLimit(8, 18),
    "StudyTime": LengthLimit(14, 28),
}

# Attributes Pixel Data cannot be read without.
IMAGE_ATTRIBUTES = ("Rows", "Columns", "BitsAllocated")
# The largest frame accepted, decoded. AWS documents none; the service holds a
# decoded frame, its HTJ2K encoding and its checksum at once, and a header can
# declare any size in a few bytes (30000 x 30000 in 5 KB of RLE). 256 MiB is
# well above the largest single-frame images (mammography, stitched
# radiographs: under 100 MB); whole-slide images come tiled in small frames.
MAX_FRAME_BYTES = 256 << 20
# The deepest nesting of sequences accepted. AWS documents none; a reader
# that recurses per level (pydicom does, for sequences of undefined length)
# dies of a few hundred, and a file can nest thousands in a few kilobytes.
# Structured reports, the deepest real files, nest about ten.
MAX_SEQUENCE_DEPTH = 64
_INTEGER_STRING = re.compile(r" *[+-]?[0-9]+ *")
_FILE_META_START = 132  # 128-byte preamble + "DICM"
_GROUP_LENGTH = b"\x02\x00\x00\x00UL\x04\x00"  # (0002,0000) UL, 4 bytes
# A quoted string or bytes of three characters or more, escapes included,
# its opening quote where one opens (not right after a word or a quote).
_QUOTED = re.compile(r"""(?<![\w'"])b?(['"])(?!\s)(?:\\.|(?!\1).){3,}?\1""")


class Refusal(Exception):
    """The import refuses the file: validation's reason code, and the message
    of the FAILURE line."""

    def __init__(self, reason: ReasonCode, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ExpectedWarning:
    """The import takes the file and attaches this warning."""

    code: WarningCode
    message: str

    @property
    def label(self) -> str:
        return warning_label(self.code)


def check_part10(head: bytes) -> None:
    """``head``: the file's first bytes (at least 132 of them when it has them)."""
    if len(head) < _FILE_META_START or head[128:132] != b"DICM":
        raise Refusal(
            ReasonCode.NOT_P10,
            "Not a DICOM Part 10 file: the 'DICM' prefix is missing after the 128-byte preamble",
        )


def check_file_meta(head: bytes, size: int) -> None:
    """A file that ends inside its file meta information is truncated, which a
    reader would otherwise take for a file without a transfer syntax or UIDs.
    The end is where (0002,0000) FileMetaInformationGroupLength says."""
    if size < _FILE_META_START + len(_GROUP_LENGTH) + 4:
        raise truncated(f"it ends at byte {size}, inside its file meta information")
    if head[_FILE_META_START : _FILE_META_START + 8] != _GROUP_LENGTH:
        return
    end = _FILE_META_START + 12 + int.from_bytes(head[140:144], "little")
    if size < end:
        raise truncated(
            f"its file meta information ends at byte {end} but the file has {size} bytes"
        )


def truncated(detail: str) -> Refusal:
    return Refusal(ReasonCode.TRUNCATED, f"The DICOM file is truncated: {detail}")


def truncated_element(tag: int, declared: int, available: int) -> Refusal:
    """An element whose value goes past the end of the file."""
    return truncated(
        f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {declared} bytes "
        f"but only {max(available, 0)} follow"
    )


def unreadable(detail: object) -> Refusal:
    return Refusal(
        ReasonCode.UNREADABLE, f"The DICOM file could not be parsed: {without_values(detail)}"
    )


def invalid_value(keyword: str, error: Exception) -> Refusal:
    """An attribute a rule reads whose value pydicom cannot convert."""
    return unreadable(f"DICOM attribute {keyword} has an invalid value: {error}")


def without_values(detail: object) -> str:
    """``detail`` with the values it quotes left out: a reader's error may
    quote the bytes it choked on, and they may be a patient's name. Two
    characters stay (a VR)."""
    return _QUOTED.sub("'…'", str(detail))


def as_text(value: object) -> str | None:
    """A value as pydicom converted it, as the rules read text: several
    values joined by backslashes; None when absent or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def as_number(value: object) -> int | None:
    """A value as pydicom converted it, as the rules read a number: one integer."""
    return value if isinstance(value, int) else None


def too_deep() -> Refusal:
    """Sequences nested past MAX_SEQUENCE_DEPTH. The message gives no depth:
    a reader stops counting at the limit."""
    return Refusal(
        ReasonCode.SEQUENCE_TOO_DEEP,
        f"The DICOM file nests sequences more than {MAX_SEQUENCE_DEPTH} levels deep",
    )


def check_transfer_syntax(uid: str | None) -> ExpectedWarning | None:
    if not uid:
        raise Refusal(
            ReasonCode.NO_TRANSFER_SYNTAX, "DICOM attribute TransferSyntaxUID does not exist"
        )
    if uid in SUPPORTED_TRANSFER_SYNTAXES:
        return None
    return ExpectedWarning(
        WarningCode.UNSUPPORTED_TRANSFER_SYNTAX,
        f"Transfer syntax {uid[:64]} is not supported; the pixel data is stored as it came, "
        "as one blob",
    )


def check_uid(keyword: str, uid: str | None) -> ExpectedWarning | None:
    """``uid`` as written, padding removed; None when absent or empty."""
    if uid is None:
        raise Refusal(ReasonCode.MISSING_UID, f"DICOM attribute {keyword} does not exist")
    if len(uid) <= DICOM_UID_LENGTH and _DICOM_UID.fullmatch(uid):
        return None
    if len(uid) > MAX_UID_LENGTH:
        raise _too_long(keyword, len(uid), MAX_UID_LENGTH)
    return ExpectedWarning(
        WarningCode.INVALID_UID_FORMAT,
        f"DICOM attribute {keyword} is not a DICOM UID (digits and dots, no leading zeros, "
        f"at most {DICOM_UID_LENGTH} characters); it is kept as written",
    )


def check_length(keyword: str, value: str) -> ExpectedWarning | None:
    """``value``: a LENGTH_LIMITS attribute as written, values joined by
    backslashes, padding removed."""
    limit = LENGTH_LIMITS[keyword]
    if len(value) > limit.healthimaging:
        raise _too_long(keyword, len(value), limit.healthimaging)
    groups = value.split("=") if keyword == "PatientName" else (value,)
    if max(map(len, groups)) > limit.dicom:
        return ExpectedWarning(
            WarningCode.INVALID_DICOM_VALUE_LENGTH,
            f"DICOM attribute {keyword} is longer than its VR allows ({limit.dicom} characters)",
        )
    return None


def _too_long(keyword: str, length: int, limit: int) -> Refusal:
    return Refusal(
        ReasonCode.ATTRIBUTE_TOO_LONG,
        f"DICOM attribute {keyword} is {length} characters long; the maximum is {limit}",
    )


def frame_bits(
    rows: int, columns: int, samples: int, bits_allocated: int, photometric: str | None
) -> int:
    """Bits of one decoded frame. YBR_FULL_422 is stored subsampled: two
    samples per pixel, not three."""
    if photometric == "YBR_FULL_422":
        samples = 2
    return rows * columns * samples * bits_allocated


def check_image(
    description: Sequence[int | None],
    samples: int | None,
    photometric: str | None,
    number_of_frames: str | None,
    native_length: int | None,
) -> None:
    """The rules of a file with Pixel Data, checked before any of it is decoded.

    ``description``: Rows, Columns, BitsAllocated (None when absent or not one
    number); ``samples``: SamplesPerPixel (None: 1); ``number_of_frames``: the
    IS value as written (None: absent); ``native_length``: Pixel Data's length
    under a native transfer syntax, None when encapsulated.
    """
    rows, columns, bits_allocated = description
    if rows is None or columns is None or bits_allocated is None:
        missing = IMAGE_ATTRIBUTES[list(description).index(None)]
        raise Refusal(
            ReasonCode.INVALID_IMAGE_ATTRIBUTE,
            f"DICOM attribute {missing} is missing or not one number; it is required with "
            "PixelData",
        )
    frames = _frame_count(number_of_frames)
    bits = frame_bits(rows, columns, samples or 1, bits_allocated, photometric)
    frame_bytes = (bits + 7) // 8
    if frame_bytes > MAX_FRAME_BYTES:
        raise Refusal(
            ReasonCode.IMAGE_TOO_LARGE,
            f"The image is {columns} x {rows} pixels of {samples or 1} x {bits_allocated} bits: "
            f"{frame_bytes} bytes per frame decoded; the largest frame accepted is "
            f"{MAX_FRAME_BYTES >> 20} MiB",
        )
    if native_length is None:
        return
    expected = (bits * frames + 7) // 8
    if native_length not in (expected, expected + expected % 2):
        raise Refusal(
            ReasonCode.PIXEL_DATA_SIZE_MISMATCH,
            f"Pixel data length {native_length} does not match Rows x Columns x "
            f"SamplesPerPixel x BitsAllocated/8 x NumberOfFrames = {expected}",
        )


def _frame_count(written: str | None) -> int:
    if not written or not written.strip():
        return 1
    if not _INTEGER_STRING.fullmatch(written):
        raise Refusal(
            ReasonCode.INVALID_IMAGE_ATTRIBUTE,
            f"DICOM attribute NumberOfFrames is {written[:32]!r}, which is not an integer "
            "string (IS)",
        )
    frames = int(written)
    if frames < 1:
        raise Refusal(
            ReasonCode.INVALID_IMAGE_ATTRIBUTE,
            f"DICOM attribute NumberOfFrames is {frames}; an image has at least one frame",
        )
    return frames


VIDEO_TRANSFER_SYNTAXES = frozenset(
    syntax for syntax in SUPPORTED_TRANSFER_SYNTAXES
    if syntax.startswith("1.2.840.10008.1.2.4.1") and syntax != "1.2.840.10008.1.2.4.1"
)


def stored_frame_count(
    transfer_syntax: str | None, number_of_frames: str | None, has_pixel_data: bool
) -> int:
    """How many frames HealthImaging lists for an instance (its ImageFrames).

    A video is one frame holding the whole stream, as DICOM does not split a
    stream into frames; pixel data in a syntax HealthImaging does not support
    is kept as one blob; any other image has its NumberOfFrames (1 when
    absent or unreadable, as an import of it would have warned).
    """
    if not has_pixel_data:
        return 0
    if transfer_syntax in VIDEO_TRANSFER_SYNTAXES or (
        transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES
    ):
        return 1
    try:
        return _frame_count(number_of_frames)
    except Refusal:
        return 1
