"""Validation: reject files HealthImaging would reject, before paying for a job.

Only the header is read: the first 16 KiB (the whole of small files, the
header of nearly all others) go through a reader that keeps only the values
the rules need (``tasks.dicom_header``; pydicom for the files it declines),
and Pixel Data's declared length is checked against the file's size, so
pixels are never read here. The bytes are read by staging, which
checksums what it sends; batches and the ledger know content by size and
version (mtime or ETag) until then. The rules are the import's own
(``import_rules``, which the local service applies too): the first rule a
file breaks is its reason, and a file the import takes with a warning stays
valid, its expected warnings recorded.
"""

from __future__ import annotations

import gc
import os
import re
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sized
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any, BinaryIO, NamedTuple

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydicom import config as pydicom_config

from config.clients import s3_filesystem
from import_rules.codes import ReasonCode
from import_rules.rules import (
    IMAGE_ATTRIBUTES,
    LENGTH_LIMITS,
    MAX_UID_LENGTH,
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
    invalid_value,
    truncated_element,
    unreadable,
)
from tasks.dicom_header import (
    PIXEL_DATA,
    UNDEFINED_LENGTH,
    Header,
    NeedMoreData,
    Truncated,
    UnusualEncoding,
    read_header,
    read_header_with_pydicom,
    tags_for,
)
from tasks.discover import SourceFile
from tasks.locations import S3Uri, is_s3
from tasks.pixel_data_end import ReadAt, check_pixel_data_end
from tasks.statuses import FileValidity
from tasks.worker_processes import worker_pool

_IMAGE_KEYWORDS = (*IMAGE_ATTRIBUTES, "NumberOfFrames", "SamplesPerPixel",
                   "PhotometricInterpretation")
_KEYWORDS = (*REQUIRED_UIDS, *LENGTH_LIMITS, *_IMAGE_KEYWORDS, "SeriesNumber",
             "SpecificCharacterSet")
_TAGS = tags_for(_KEYWORDS)
_WANTED = frozenset(_TAGS.values())
# With the longest value (in bytes, never fewer than its characters) that
# needs no closer look.
_LIMIT_TAGS = {keyword: (_TAGS[keyword], limit.dicom) for keyword, limit in LENGTH_LIMITS.items()}
_PLAIN_INTEGER = re.compile(r"[+-]?[0-9]+")
# The first read: the whole of a small file, the header of nearly every other
# (a header that goes on is read on, doubling). Not more: copying 64 KiB of a
# CT slice's pixels from the page cache cost 10% of validating it.
_FIRST_READ = 16 << 10
# From S3, where a request's latency outweighs its bytes, one request covers
# the first read and two doublings.
_S3_REQUEST = 64 << 10
# Starting worker processes costs about a second the first time in a process
# (the fork server imports this module), tens of milliseconds after that.
_PARALLEL_AFTER_SECONDS = 2.0
# Chunks sent to workers take about this long: the pool's cost per chunk
# (pickling, queues, wake-ups) stays small against the work, each chunk's
# records cross the pipe in a few reads, and the last chunk keeps one worker
# busy alone only briefly (bench/validate.py measures 1 worker against 2).
_CHUNK_SECONDS = 0.03
_MAX_CHUNK = 4096


@dataclass(frozen=True)
class ValidationRecord:
    uri: str
    relative_path: str
    size: int
    status: FileValidity
    reason_code: ReasonCode | None = None
    reason_message: str | None = None
    # Warnings the import will attach to a valid file, as the report's
    # warning_codes spells them, ';'-separated.
    expected_warnings: str | None = None
    transfer_syntax: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    series_number: str | None = None
    # Discovery's mtime or ETag: with size, what batches and the ledger know
    # content by before staging reads the bytes.
    version: str | None = None
    # Of the bytes staged, filled in by staging (never by validation).
    sha256: str | None = None
    # PHI: filled only when the operator opts in (include_phi), for the report.
    patient_name: str | None = None
    patient_id: str | None = None
    patient_birth_date: str | None = None

    @property
    def is_valid(self) -> bool:
        return self.status is FileValidity.VALID


class Findings(NamedTuple):
    """What validation learns from a file's bytes: a record but for what
    discovery already knew (URI, path, version). Worker processes send back
    these alone, in ValidationRecord's field names."""

    size: int
    status: FileValidity
    reason_code: ReasonCode | None = None
    reason_message: str | None = None
    # Warnings the import will attach to a valid file, as the report's
    # warning_codes spells them, ';'-separated.
    expected_warnings: str | None = None
    transfer_syntax: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    series_number: str | None = None
    patient_name: str | None = None
    patient_id: str | None = None
    patient_birth_date: str | None = None


def _record(source: SourceFile, findings: tuple[Any, ...]) -> ValidationRecord:
    """``findings`` is a Findings, or the plain tuple of one as workers send it.
    The record is built as pickle and copy build one, without the frozen
    dataclass's ``__init__``, which costs three times this: the process
    receiving the workers' findings builds some 40,000 records a second, on a
    core the workers want."""
    record = object.__new__(ValidationRecord)
    fields = record.__dict__
    fields.update(zip(Findings._fields, findings, strict=True))
    fields["uri"] = source.uri
    fields["relative_path"] = source.relative_path
    fields["version"] = source.version
    fields["sha256"] = None
    return record


def validate_file(
    source: SourceFile, include_phi: bool = False, fs: Any | None = None
) -> ValidationRecord:
    """Validate one file. ``fs`` is the s3fs filesystem for S3 URIs."""
    return _record(source, _findings(source.uri, source.size, include_phi, fs))


def _findings(uri: str, size: int, include_phi: bool, fs: Any | None) -> Findings:
    try:
        with _open(uri, fs) as fileobj:
            return _validate_stream(size, fileobj, include_phi)
    except OSError as exc:
        return Findings(size, FileValidity.INVALID, ReasonCode.UNREADABLE,
                        f"The file could not be read: {exc}.")


def validate_files(
    files: Iterable[SourceFile],
    workers: int | None = None,
    include_phi: bool = False,
    chunk_size: int = 128,
) -> list[ValidationRecord]:
    """Validate files, in input order, and mark duplicate SOP instances.

    Header parsing is CPU bound, so a large input goes to worker
    processes in chunks, at most two per worker in flight so that a streaming
    input is never fully materialised. The first ``chunk_size`` files are
    validated here and timed: when the rest would take less than starting
    workers costs, it is validated here too; otherwise the time per file sizes
    the chunks sent to the workers.
    """
    workers = workers or os.cpu_count() or 1
    pending = iter(files)
    first = list(islice(pending, chunk_size))
    if not first:
        return []
    reader, duplicates = _Validator(), _DuplicateMarker()
    with collector_paused():
        started = time.perf_counter()
        records = list(map(duplicates.mark, reader.validate(first, include_phi)))
        per_file = (time.perf_counter() - started) / len(first)
        remaining = len(files) - len(first) if isinstance(files, Sized) else None
        if workers == 1 or (
            remaining is not None and per_file * remaining < _PARALLEL_AFTER_SECONDS
        ):
            records.extend(map(duplicates.mark, reader.validate(pending, include_phi)))
            return records
        size = max(chunk_size, min(_MAX_CHUNK, round(_CHUNK_SECONDS / max(per_file, 1e-6))))
        with worker_pool(workers) as pool:
            in_flight: deque[tuple[list[SourceFile], Future[list[tuple[Any, ...]]]]] = deque()
            for chunk in _chunked(pending, size):
                uris, sizes = [source.uri for source in chunk], [source.size for source in chunk]
                in_flight.append((chunk, pool.submit(worker_findings, uris, sizes, include_phi)))
                if len(in_flight) >= 2 * workers:
                    chunk, findings = in_flight.popleft()
                    records.extend(map(duplicates.mark, map(_record, chunk, findings.result())))
            while in_flight:
                chunk, findings = in_flight.popleft()
                records.extend(map(duplicates.mark, map(_record, chunk, findings.result())))
        return records


@contextmanager
def collector_paused() -> Iterator[None]:
    """Records are many and long-lived, and the cyclic garbage collector's
    passes over the ones already made cost a tenth of validating them, and more
    than building them: on the path that receives them from workers, that is
    what keeps two workers from two cores. Validation leaves no cyclic garbage
    (none after the pydicom test files, nor after 20,000 files); what other
    threads leave meanwhile is collected once this ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def validate_chunk(
    files: Iterable[SourceFile], include_phi: bool = False
) -> list[ValidationRecord]:
    """Validate files in this process, duplicates not marked (that needs every
    file): the unit of work of a cluster worker."""
    return _Validator().validate(files, include_phi)


class _Validator:
    """Opens an s3fs filesystem on first need, once per call rather than per
    process: a process that outlives the call may see the S3 endpoint change."""

    def __init__(self) -> None:
        self.fs: Any = None

    def validate(self, files: Iterable[SourceFile], include_phi: bool) -> list[ValidationRecord]:
        return [_record(source, self.findings(source.uri, source.size, include_phi))
                for source in files]

    def findings(self, uri: str, size: int, include_phi: bool) -> Findings:
        if self.fs is None and is_s3(uri):
            self.fs = s3_filesystem()
        return _findings(uri, size, include_phi, self.fs)


def mark_duplicates(records: Iterable[ValidationRecord]) -> list[ValidationRecord]:
    """The first valid file of a SOP instance wins; importing the others would
    replace it in the image set with whichever the service happened to read last."""
    return list(map(_DuplicateMarker().mark, records))


class _DuplicateMarker:
    """Marks records in the order given, as they come: the process receiving
    them from workers marks each chunk while the workers go on."""

    def __init__(self) -> None:
        self.kept: dict[str, str] = {}

    def mark(self, record: ValidationRecord) -> ValidationRecord:
        sop = record.sop_instance_uid
        if not record.is_valid or sop is None:
            return record
        kept = self.kept.get(sop)
        if kept is None:
            self.kept[sop] = record.uri
            return record
        return _duplicate_of(record, kept)


def with_earlier_instances(
    records: Iterable[ValidationRecord], kept: Mapping[str, str]
) -> list[ValidationRecord]:
    """Records of one window, where ``kept`` maps SOP Instance UIDs to the file
    another window kept for each (tasks.ledger.inventory): this window's files
    of those instances are its duplicates, as if validated together."""
    return [_with_kept(record, kept) for record in records]


def _with_kept(record: ValidationRecord, kept: Mapping[str, str]) -> ValidationRecord:
    sop = record.sop_instance_uid
    if sop is None or sop not in kept:
        return record
    if record.is_valid or record.reason_code is ReasonCode.DUPLICATE_SOP_INSTANCE:
        return _duplicate_of(record, kept[sop])
    return record


def _duplicate_of(record: ValidationRecord, kept: str) -> ValidationRecord:
    return replace(
        record,
        status=FileValidity.DUPLICATE,
        reason_code=ReasonCode.DUPLICATE_SOP_INSTANCE,
        reason_message=f"SOPInstanceUID {record.sop_instance_uid} is also in {kept}, "
                       "which is the one imported.",
    )


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
_worker_reader = _Validator()


def worker_findings(
    uris: list[str], sizes: list[int], include_phi: bool = False
) -> list[tuple[Any, ...]]:
    """A worker process's part of validate_files. Only what validation reads
    comes in and only findings go back, as plain tuples, which the caller pairs
    with its files: lists of strings, integers and tuples pickle in a third of
    the time the dataclasses and named tuples take (their reduction runs Python
    code per object)."""
    with collector_paused():
        return [tuple(_worker_reader.findings(uri, size, include_phi))
                for uri, size in zip(uris, sizes, strict=True)]


def _open(uri: str, fs: Any | None) -> BinaryIO:
    if is_s3(uri):
        if fs is None:
            raise ValueError("an s3fs filesystem is needed to read S3 URIs")
        stream: BinaryIO = fs.open(S3Uri.parse(uri).path, "rb", block_size=_S3_REQUEST,
                                   cache_type="readahead")
        return stream
    return open(uri, "rb")


def _validate_stream(listed_size: int, fileobj: BinaryIO, include_phi: bool) -> Findings:
    # The size found by discovery, plus one byte to notice a file that grew:
    # asking for more would allocate it per file, however small.
    first_read = min(_FIRST_READ, listed_size + 1)
    data = fileobj.read(first_read)
    complete = len(data) < first_read
    try:
        check_part10(data)
        check_file_meta(data, len(data) if complete else max(listed_size, len(data)))
        header, fields = _parsed(fileobj, data, complete, include_phi)
    except Refusal as refusal:
        return _invalid(listed_size, refusal)

    size = len(data) if complete else _size_now(fileobj)
    try:
        expected = _check(header, size, _read_at(fileobj, data, complete))
    except Refusal as refusal:
        return Findings(size, FileValidity.INVALID, refusal.reason, refusal.message, **fields)
    except Exception as exc:  # what pydicom raises on the elements after Pixel Data
        cannot = unreadable(exc)
        return Findings(size, FileValidity.INVALID, cannot.reason, cannot.message, **fields)
    labels = ";".join(warning.label for warning in expected) if expected else None
    return Findings(size, FileValidity.VALID, expected_warnings=labels, **fields)


def _parsed(
    fileobj: BinaryIO, data: bytes, complete: bool, include_phi: bool
) -> tuple[Header, dict[str, Any]]:
    """The header, by the fast reader or else by pydicom, and the record's
    fields from it.

    Raises:
        Refusal: the file ends inside a value, or cannot be parsed.
    """
    try:
        try:
            header = _read_header(fileobj, data, complete)
        except UnusualEncoding:
            fileobj.seek(0)
            header = read_header_with_pydicom(fileobj, _WANTED, _quiet_pydicom)
        return header, _identity(header, include_phi)
    except Truncated as cut:
        raise truncated_element(cut.tag, cut.declared, cut.available) from None
    except Refusal:
        raise
    except Exception as exc:  # whatever a malformed header makes a reader raise
        raise unreadable(exc) from None


def _read_at(fileobj: BinaryIO, data: bytes, complete: bool) -> ReadAt:
    """Reads anywhere in the file: from the bytes read already when they are
    the whole file."""
    if complete:
        return lambda offset, count: data[offset : offset + count]

    def read_at(offset: int, count: int) -> bytes:
        fileobj.seek(offset)
        return fileobj.read(count)

    return read_at


def _size_now(fileobj: BinaryIO) -> int:
    """The file's size as it is now, not as discovery saw it: a file cut short
    or still growing is judged by what is there."""
    try:
        return os.fstat(fileobj.fileno()).st_size
    except (OSError, ValueError):  # no descriptor: an s3fs file
        return int(fileobj.seek(0, os.SEEK_END))


def _read_header(fileobj: BinaryIO, data: bytes, complete: bool) -> Header:
    """The header from the bytes read so far, reading on while it goes on."""
    while True:
        try:
            return read_header(data, complete, _WANTED)
        except NeedMoreData:
            wanted = len(data)
            more = fileobj.read(wanted)
            complete = len(more) < wanted
            data += more


def _check(header: Header, size: int, read_at: ReadAt) -> list[ExpectedWarning]:
    """The import rules, in their order (import_rules.rules); returns the
    warnings the import will attach."""
    expected: list[ExpectedWarning] = []
    if (warning := check_transfer_syntax(header.transfer_syntax)) is not None:
        expected.append(warning)
    pixel = header.pixel if header.pixel is not None and header.pixel.tag == PIXEL_DATA else None
    if pixel is not None and pixel.start is not None:  # else deflated: checked as inflated
        check_pixel_data_end(read_at, pixel.value_start, pixel.length, size,
                             header.explicit_vr, header.little_endian)
    for keyword in REQUIRED_UIDS:
        if (warning := check_uid(keyword, _text_value(header, keyword))) is not None:
            expected.append(warning)
    for keyword, (tag, longest_unchecked) in _LIMIT_TAGS.items():
        raw = header.raw(tag)
        if raw is None or (len(raw) <= longest_unchecked and tag not in header.odd_vrs):
            continue
        value = _converted_text(header, keyword)
        if value is not None and (warning := check_length(keyword, value)) is not None:
            expected.append(warning)
    if pixel is not None:
        native = (pixel.length if header.transfer_syntax in NATIVE_TRANSFER_SYNTAXES
                  and pixel.length != UNDEFINED_LENGTH else None)
        check_image(
            [_number(header, keyword) for keyword in IMAGE_ATTRIBUTES],
            _number(header, "SamplesPerPixel"),
            _text_value(header, "PhotometricInterpretation"),
            header.as_written(_TAGS["NumberOfFrames"]),
            native,
        )
    return expected


def _number(header: Header, keyword: str) -> int | None:
    """A US value as the import reads it; None when absent or not one number."""
    tag = _TAGS[keyword]
    if tag not in header.odd_vrs:
        return header.unsigned(tag)
    try:
        with _quiet_pydicom():
            return as_number(header.decoded(tag))
    except Exception:  # pydicom raises many types for malformed values
        return None


def _text_value(header: Header, keyword: str) -> str | None:
    """A text value as the import reads it. Its bytes say it when it is
    written with its own VR; with another, pydicom converts it as that VR."""
    tag = _TAGS[keyword]
    return _converted_text(header, keyword) if tag in header.odd_vrs else header.text(tag)


def _converted_text(header: Header, keyword: str) -> str | None:
    """A text value as pydicom converts it: in the dataset's character set,
    values joined by backslashes.

    Raises:
        Refusal: pydicom cannot convert it.
    """
    try:
        with _quiet_pydicom():
            return as_text(header.decoded(_TAGS[keyword]))
    except Exception as error:  # pydicom raises many types for malformed values
        raise invalid_value(keyword, error) from None


def _uid(header: Header, keyword: str) -> str | None:
    """None for a UID that cannot be read or is longer than the import takes:
    the rules refuse the file for it, in their order, and the value
    (kilobytes, in a damaged file) identifies nothing."""
    try:
        uid = _text_value(header, keyword)
    except Refusal:
        return None
    return uid if uid is None or len(uid) <= MAX_UID_LENGTH else None


def _series_number(header: Header) -> str | None:
    """An IS value; through pydicom unless it is a plain integer. No rule
    reads it: a value pydicom cannot convert is no series number."""
    tag = _TAGS["SeriesNumber"]
    text = header.text(tag)
    if text is None or (_PLAIN_INTEGER.fullmatch(text) and tag not in header.odd_vrs):
        return text
    try:
        with _quiet_pydicom():
            return _text(header.decoded(tag))
    except Exception:  # pydicom raises many types for malformed values
        return None


def _identity(header: Header, include_phi: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "transfer_syntax": header.transfer_syntax,
        "sop_instance_uid": _uid(header, "SOPInstanceUID"),
        "study_instance_uid": _uid(header, "StudyInstanceUID"),
        "series_instance_uid": _uid(header, "SeriesInstanceUID"),
        "series_number": _series_number(header),
    }
    if include_phi:
        fields.update(_patient(header))
    return fields


def _patient(header: Header) -> dict[str, str | None]:
    """For the report only: a value pydicom cannot convert is left out."""
    found: dict[str, str | None] = {}
    for field, keyword in (("patient_name", "PatientName"), ("patient_id", "PatientID"),
                           ("patient_birth_date", "PatientBirthDate")):
        try:
            with _quiet_pydicom():
                found[field] = _text(header.decoded(_TAGS[keyword]))
        except Exception:  # pydicom raises many types for malformed values
            found[field] = None
    return found


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


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


def _invalid(size: int, refusal: Refusal) -> Findings:
    return Findings(size, FileValidity.INVALID, refusal.reason, refusal.message)


@task(name="validate", cache_policy=NO_CACHE)
def validate(
    files: list[SourceFile], workers: int | None = None, include_phi: bool = False
) -> list[ValidationRecord]:
    return validate_files(files, workers=workers, include_phi=include_phi)


# Reading headers is idempotent: a part lost with its worker is redone.
@task(name="validate-part", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def validate_part(files: list[SourceFile], include_phi: bool = False) -> list[ValidationRecord]:
    """Run by a cluster worker on its share of the files; the flow marks
    duplicates once every part is back."""
    return validate_chunk(files, include_phi)
