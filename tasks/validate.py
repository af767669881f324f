"""Validation: reject files HealthImaging would reject, before paying for a job.

Each file is read once for its header (pydicom stops at Pixel Data and reports
its declared length through ``stop_when``, so pixels are never decoded or held
in memory) and once, sequentially, for its SHA-256, which staging uses to skip
files that are already uploaded. Rules follow the published import
requirements (docs: healthimaging-behavior.md §3.2); the first rule a file
breaks is its reason.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from itertools import chain, islice
from typing import IO, Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag

from config.clients import s3_filesystem
from tasks.discover import SourceFile
from tasks.locations import S3Uri, is_s3


class FileValidity(StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    DUPLICATE = "duplicate"


class ReasonCode(StrEnum):
    NOT_P10 = "not_p10"
    NO_TRANSFER_SYNTAX = "no_transfer_syntax"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    MISSING_UID = "missing_uid"
    INVALID_UID = "invalid_uid"
    ATTRIBUTE_TOO_LONG = "attribute_too_long"
    PIXEL_DATA_SIZE_MISMATCH = "pixel_data_size_mismatch"
    UNREADABLE = "unreadable"
    DUPLICATE_SOP_INSTANCE = "duplicate_sop_instance"


NATIVE_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    }
)
SUPPORTED_TRANSFER_SYNTAXES = NATIVE_TRANSFER_SYNTAXES | frozenset(
    f"1.2.840.10008.1.2.{suffix}"
    for suffix in (
        "4.50", "4.51", "4.57", "4.70",  # JPEG baseline, extended, lossless
        "4.80", "4.81",  # JPEG-LS
        "4.90", "4.91",  # JPEG 2000
        "4.201", "4.202", "4.203",  # HTJ2K
        "5",  # RLE
        "4.100", "4.101",  # MPEG-2
        "4.102", "4.103", "4.104", "4.105", "4.106",  # H.264
        "4.107", "4.108",  # HEVC
    )
)
_DEFLATED = "1.2.840.10008.1.2.1.99"

_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_UID_MAX = 64
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
# Published limits; an import fails above them.
ATTRIBUTE_LIMITS = {
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
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_PIXEL_DATA = 0x7FE00010
_EXPLICIT_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
_UNDEFINED_LENGTH = 0xFFFFFFFF
_READ_CHUNK = 1 << 20
# Larger values are skipped by pydicom instead of read; every limit above is
# smaller, so a deferred value is already known to be too long.
_DEFER_SIZE = 1024


@dataclass(frozen=True)
class ValidationRecord:
    uri: str
    relative_path: str
    size: int
    status: FileValidity
    reason_code: ReasonCode | None = None
    reason_message: str | None = None
    transfer_syntax: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    series_number: str | None = None
    sha256: str | None = None
    # PHI: filled only when the operator opts in (include_phi), for the report.
    patient_name: str | None = None
    patient_id: str | None = None
    patient_birth_date: str | None = None

    @property
    def is_valid(self) -> bool:
        return self.status is FileValidity.VALID


class _Invalid(Exception):
    def __init__(self, code: ReasonCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def validate_file(
    source: SourceFile, include_phi: bool = False, fs: Any | None = None
) -> ValidationRecord:
    """Validate one file. ``fs`` is the s3fs filesystem for S3 URIs."""
    try:
        with _open(source.uri, fs) as fileobj:
            return _validate_stream(source, fileobj, include_phi)
    except OSError as exc:
        return _invalid(source, ReasonCode.UNREADABLE, f"The file could not be read: {exc}.")


def validate_files(
    files: Iterable[SourceFile],
    workers: int | None = None,
    include_phi: bool = False,
    chunk_size: int = 128,
) -> list[ValidationRecord]:
    """Validate files in parallel, in input order, then mark duplicate SOP instances.

    Chunks go to a process pool because header parsing and hashing are CPU
    bound; at most two chunks per worker are in flight so a streaming input
    is never fully materialised. Spawned (not forked) workers: the caller may
    be running s3fs's event-loop thread, which a fork would copy mid-state.
    """
    workers = workers or os.cpu_count() or 1
    chunks = _chunked(files, chunk_size)
    head = list(islice(chunks, 2))
    if workers == 1 or len(head) < 2:
        # One chunk: starting worker processes (~1 s with spawn) costs more than it saves.
        # A filesystem per call here, not the worker cache: this process outlives
        # the call, and the S3 endpoint may have changed by the next one.
        fs = None
        records = []
        for chunk in chain(head, chunks):
            if fs is None and any(is_s3(f.uri) for f in chunk):
                fs = s3_filesystem()
            records.extend(validate_file(f, include_phi, fs) for f in chunk)
        return mark_duplicates(records)
    records: list[ValidationRecord] = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        in_flight: deque[Future[list[ValidationRecord]]] = deque()
        for chunk in chain(head, chunks):
            in_flight.append(pool.submit(_validate_chunk, chunk, include_phi))
            if len(in_flight) >= 2 * workers:
                records.extend(in_flight.popleft().result())
        while in_flight:
            records.extend(in_flight.popleft().result())
    return mark_duplicates(records)


def mark_duplicates(records: list[ValidationRecord]) -> list[ValidationRecord]:
    """The first valid file of a SOP instance wins; importing the others would
    replace it in the image set with whichever the service happened to read last."""
    kept: dict[str, str] = {}
    out: list[ValidationRecord] = []
    for record in records:
        sop = record.sop_instance_uid
        if record.is_valid and sop is not None:
            if sop in kept:
                record = replace(
                    record,
                    status=FileValidity.DUPLICATE,
                    reason_code=ReasonCode.DUPLICATE_SOP_INSTANCE,
                    reason_message=f"SOPInstanceUID {sop} is also in {kept[sop]}, "
                    "which is the one imported.",
                )
            else:
                kept[sop] = record.uri
        out.append(record)
    return out


def _chunked(files: Iterable[SourceFile], size: int) -> Iterator[list[SourceFile]]:
    chunk: list[SourceFile] = []
    for item in files:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# One s3fs per worker process, reused across its chunks; the process (and the
# pool) lives only as long as one validate_files call.
_worker_s3fs: Any = None


def _validate_chunk(chunk: list[SourceFile], include_phi: bool) -> list[ValidationRecord]:
    global _worker_s3fs
    if _worker_s3fs is None and any(is_s3(f.uri) for f in chunk):
        _worker_s3fs = s3_filesystem()
    return [validate_file(f, include_phi, _worker_s3fs) for f in chunk]


def _open(uri: str, fs: Any | None) -> IO[bytes]:
    if is_s3(uri):
        if fs is None:
            raise ValueError("an s3fs filesystem is needed to read S3 URIs")
        return fs.open(S3Uri.parse(uri).path, "rb", block_size=4 << 20, cache_type="readahead")
    return open(uri, "rb")


def _validate_stream(
    source: SourceFile, fileobj: IO[bytes], include_phi: bool
) -> ValidationRecord:
    head = fileobj.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        return _invalid(
            source,
            ReasonCode.NOT_P10,
            "Not a DICOM Part 10 file: the 128-byte preamble and 'DICM' prefix are missing.",
        )
    fileobj.seek(0)
    pixel: dict[str, Any] = {}

    def stop_at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
        if tag in _PIXEL_TAGS:
            pixel.update(tag=int(tag), vr=vr, length=length)
            return True
        return False

    try:
        with _quiet_pydicom():
            ds = read_partial(fileobj, stop_when=stop_at_pixels, defer_size=_DEFER_SIZE)
            pixel["start"] = fileobj.tell()
            fields = _identity(ds, include_phi)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError,
            NotImplementedError) as exc:
        return _invalid(source, ReasonCode.UNREADABLE, f"pydicom could not parse the file: {exc}.")

    fileobj.seek(0)
    digest, actual_size = _sha256(fileobj)
    base = ValidationRecord(
        uri=source.uri,
        relative_path=source.relative_path,
        size=actual_size,
        status=FileValidity.VALID,
        sha256=digest,
        **fields,
    )
    try:
        with _quiet_pydicom():
            _check(ds, fields["transfer_syntax"], pixel, actual_size)
    except _Invalid as problem:
        return replace(
            base,
            status=FileValidity.INVALID,
            reason_code=problem.code,
            reason_message=problem.message,
        )
    return base


def _check(ds: Dataset, transfer_syntax: str | None, pixel: dict[str, Any], size: int) -> None:
    if not transfer_syntax:
        raise _Invalid(
            ReasonCode.NO_TRANSFER_SYNTAX,
            "The file meta information has no TransferSyntaxUID (0002,0010).",
        )
    if transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise _Invalid(
            ReasonCode.UNSUPPORTED_TRANSFER_SYNTAX,
            f"Transfer syntax {transfer_syntax} is not accepted by HealthImaging.",
        )
    for keyword in REQUIRED_UIDS:
        value = ds.get(keyword)
        if value is None or str(value).strip() == "":
            raise _Invalid(ReasonCode.MISSING_UID, f"{keyword} is missing or empty.")
        uid = str(value).strip()
        if len(uid) > _UID_MAX or not _UID_RE.fullmatch(uid):
            raise _Invalid(
                ReasonCode.INVALID_UID,
                f"{keyword} {uid[:80]!r} is not a valid UID (digits and dots, "
                f"no leading zeros, at most {_UID_MAX} characters).",
            )
    for keyword, limit in ATTRIBUTE_LIMITS.items():
        length = _value_length(ds, keyword)
        if length > limit:
            raise _Invalid(
                ReasonCode.ATTRIBUTE_TOO_LONG,
                f"{keyword} is {length} characters long; HealthImaging accepts at most {limit}.",
            )
    if pixel.get("tag") == _PIXEL_DATA:
        _check_pixel_length(ds, transfer_syntax, pixel, size)


def _check_pixel_length(
    ds: Dataset, transfer_syntax: str, pixel: dict[str, Any], size: int
) -> None:
    declared: int = pixel["length"]
    if declared == _UNDEFINED_LENGTH:
        return  # encapsulated (compressed) frames: no fixed expected size
    if transfer_syntax != _DEFLATED:
        # The deflated dataset was inflated in memory, so offsets do not map to the file.
        # pydicom passes vr=None for implicit VR, whose headers are always 8 bytes.
        header = 12 if pixel["vr"] in _EXPLICIT_LONG_VRS else 8
        available = size - pixel["start"] - header
        if declared > available:
            raise _Invalid(
                ReasonCode.UNREADABLE,
                f"The file is truncated: Pixel Data declares {declared} bytes "
                f"but only {max(available, 0)} remain.",
            )
    if transfer_syntax not in NATIVE_TRANSFER_SYNTAXES:
        return
    expected = _expected_pixel_bytes(ds)
    if declared != expected and not (expected % 2 == 1 and declared == expected + 1):
        raise _Invalid(
            ReasonCode.PIXEL_DATA_SIZE_MISMATCH,
            f"Pixel Data is {declared} bytes; Rows x Columns x SamplesPerPixel x "
            f"BitsAllocated/8 x NumberOfFrames gives {expected}.",
        )


def _expected_pixel_bytes(ds: Dataset) -> int:
    """Rows x Columns x SamplesPerPixel x BitsAllocated/8 x NumberOfFrames, rounded
    up to whole bytes (1-bit data is packed); YBR_FULL_422 stores two samples per pixel."""
    try:
        pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
            samples = 2
        bits = pixels * samples * int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise _Invalid(
            ReasonCode.PIXEL_DATA_SIZE_MISMATCH,
            f"The expected Pixel Data size cannot be computed: {exc}.",
        ) from exc
    return (bits + 7) // 8


def _identity(ds: Dataset, include_phi: bool) -> dict[str, Any]:
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    fields: dict[str, Any] = {
        "transfer_syntax": str(transfer_syntax) if transfer_syntax else None,
        "sop_instance_uid": _text(ds, "SOPInstanceUID"),
        "study_instance_uid": _text(ds, "StudyInstanceUID"),
        "series_instance_uid": _text(ds, "SeriesInstanceUID"),
        "series_number": _text(ds, "SeriesNumber"),
    }
    if include_phi:
        fields["patient_name"] = _text(ds, "PatientName")
        fields["patient_id"] = _text(ds, "PatientID")
        fields["patient_birth_date"] = _text(ds, "PatientBirthDate")
    return fields


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _value_length(ds: Dataset, keyword: str) -> int:
    """Length as written in the file, without decoding the character set."""
    tag = Tag(keyword)
    if tag not in ds:
        return 0
    element = ds.get_item(tag)
    value = element.value
    if value is None:
        return int(getattr(element, "length", 0) or 0)
    if isinstance(value, bytes):
        return len(value.rstrip(b" \x00"))
    return len(str(value).rstrip(" \x00"))


def _sha256(fileobj: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    total = 0
    while chunk := fileobj.read(_READ_CHUNK):
        digest.update(chunk)
        total += len(chunk)
    return digest.hexdigest(), total


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Invalid values are what we are looking for: pydicom's per-value warnings
    (and log lines) about them would only flood the workers' stderr."""
    previous = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_config.settings.reading_validation_mode = previous


def _invalid(source: SourceFile, code: ReasonCode, message: str) -> ValidationRecord:
    return ValidationRecord(
        uri=source.uri,
        relative_path=source.relative_path,
        size=source.size,
        status=FileValidity.INVALID,
        reason_code=code,
        reason_message=message,
    )


@task(name="validate", cache_policy=NO_CACHE)
def validate(
    files: list[SourceFile], workers: int | None = None, include_phi: bool = False
) -> list[ValidationRecord]:
    return validate_files(files, workers=workers, include_phi=include_phi)
