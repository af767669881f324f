"""Storing DICOM Part 10 files in a data store: the one path that import jobs
and STOW-RS requests share. AWS groups STOW-RS instances "using the same
logic as asynchronous import jobs" (behaviour doc §7); here it is the same
code, so both judge a file by the same import rules (``part10``), store its
frames in the data store's lossless format with the same checksums
(``frames``) and place it into image sets the same way (``grouping``).

Files are read, checked and their frames stored in parallel; placing the
instances into image sets then happens once, in the order the files were
given, so the result does not depend on which thread finished first. All
that is written carries the writer's ID (an import job's, or a STOW-RS
request's), so that ``ImageSetRepository.roll_back_import`` can remove it
when the writer fails.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emulator.worker.dicom_json import instance_attributes
from emulator.worker.frames import PutFrame, store_pixel_data
from emulator.worker.grouping import ImageSetSummary, PreparedInstance, place_instances
from emulator.worker.import_output import CUSTOMER_ERROR, SERVER_ERROR, FileOutcome
from emulator.worker.import_warnings import discarded_warning
from emulator.worker.part10 import CheckedInstance, InvalidDicomFile, read_instance
from import_rules.codes import FailureReason

if TYPE_CHECKING:
    from emulator.state.models import HealthImagingBackend

log = logging.getLogger(__name__)

# Files read, decoded and encoded at once within one import or request.
# Decoding and HTJ2K encoding release the GIL, so threads scale with cores.
FILE_WORKERS = min(8, os.cpu_count() or 1)

# Called with each instance that passed the import rules, before its frames
# are stored: it may change the dataset (an import job's JSON metadata
# mappings) or refuse the instance by raising InvalidDicomFile (a STOW-RS
# request's study check).
Prepare = Callable[[CheckedInstance], None]


class StoringStopped(Exception):
    """The service is stopping and the writer's grace period is over."""


class InputUnreadable(Exception):
    """A file could not be read, through no fault of its own (the service's
    own storage failed): a server error, not the file's."""


@dataclass(frozen=True)
class InputFile:
    """One file to store: the name its outcome is reported under (unique
    within one call), its size, and how to read its bytes (which may raise
    InputUnreadable)."""

    name: str
    size: int
    read: Callable[[], bytes]


@dataclass
class StoredFiles:
    """Each file's outcome, in the order given, the image sets written, and
    the (study, series) of the instances stored."""

    outcomes: list[FileOutcome]
    summaries: list[ImageSetSummary]
    series: set[tuple[str, str]]


def stop_if_cancelled(backend: HealthImagingBackend) -> None:
    """Where a stopping service ends a writer: before each file and each
    frame, and before the instances are placed (placing then runs to its
    end, so an image set is never half written)."""
    if backend.imports_cancelled.is_set():
        raise StoringStopped


def store_files(
    backend: HealthImagingBackend,
    datastore_id: str,
    files: Sequence[InputFile],
    writer_id: str,
    *,
    prepare: Prepare | None = None,
    before_placing: Callable[[], None] | None = None,
    keep_warning_reason: bool = False,
) -> StoredFiles:
    """Store ``files`` in the data store and place them into image sets.

    A file's own problems make its outcome failed, and the others go on.
    ``before_placing`` runs once every file is read and its frames stored
    (an import job holds there for an injected duration). With
    ``keep_warning_reason`` each warned instance keeps the code of its first
    warning in its metadata as WarningReason (0008,1196), as STOW-RS keeps it
    (behaviour doc §7): in the image set metadata document at
    ``Study.Series[<SeriesInstanceUID>].Instances[<SOPInstanceUID>].DICOM.WarningReason``,
    a number, as every US value there; searches read it from there. Import
    jobs report their warnings in the job's output instead.

    Raises:
        StoringStopped: the service stopped meanwhile.
        ImageSetsBusy: other writes kept the target image sets locked.
    """
    lossless_format = backend.datastores[datastore_id].lossless_storage_format

    def put_frame(frame_id: str, data: bytes, transfer_syntax_uid: str) -> None:
        stop_if_cancelled(backend)
        backend.image_sets.put_frame(frame_id, data, transfer_syntax_uid, import_job_id=writer_id)

    def store_one(file: InputFile) -> tuple[FileOutcome, PreparedInstance | None]:
        return _store_file(file, backend, put_frame, lossless_format, prepare,
                           keep_warning_reason)

    with ThreadPoolExecutor(FILE_WORKERS, thread_name_prefix="store-file") as pool:
        results = list(pool.map(store_one, files))
    if before_placing is not None:
        before_placing()
    stop_if_cancelled(backend)
    prepared = [instance for _, instance in results if instance is not None]
    placed = place_instances(backend.image_sets, datastore_id, prepared, writer_id)
    outcomes = [outcome for outcome, _ in results]
    for outcome in outcomes:
        outcome.placement = placed.placements.get(outcome.input_file)
    series = {(i.study_instance_uid, i.series_instance_uid) for i in prepared}
    return StoredFiles(outcomes, placed.summaries, series)


def _store_file(
    file: InputFile,
    backend: HealthImagingBackend,
    put_frame: PutFrame,
    lossless_format: str,
    prepare: Prepare | None,
    keep_warning_reason: bool,
) -> tuple[FileOutcome, PreparedInstance | None]:
    """Read, check and store the frames of one file."""
    stop_if_cancelled(backend)
    limit = backend.config.max_bytes_per_file
    if file.size > limit:
        return _failed(FileOutcome(file.name), CUSTOMER_ERROR,
                       f"File is {file.size} bytes; the limit is {limit}",
                       FailureReason.OUT_OF_RESOURCES)
    try:
        data = file.read()
    except InputUnreadable as error:
        return _failed(FileOutcome(file.name), SERVER_ERROR, str(error),
                       FailureReason.PROCESSING_FAILURE)
    try:
        checked = read_instance(data)
    except InvalidDicomFile as error:
        return _failed(FileOutcome(file.name), CUSTOMER_ERROR, str(error), error.reason)
    del data  # the dataset holds what is needed; a large file is not kept twice
    outcome = FileOutcome(
        file.name,
        sop_class_uid=_sop_class_uid(checked),
        sop_instance_uid=checked.sop_instance_uid,
        study_instance_uid=checked.study_instance_uid,
        series_instance_uid=checked.series_instance_uid,
    )
    try:
        if prepare is not None:
            prepare(checked)
    except InvalidDicomFile as error:
        return _failed(outcome, CUSTOMER_ERROR, str(error), error.reason)
    attributes = instance_attributes(checked.dataset)
    try:
        stored = store_pixel_data(
            checked.dataset,
            checked.transfer_syntax_uid,
            put_frame,
            transcode=backend.config.transcode_htj2k,
            lossless_format=lossless_format,
        )
    except StoringStopped:
        raise
    except Exception:  # a bug or a storage failure here is ours, not the file's
        log.exception("storing the frames of %s failed", file.name)
        return _failed(outcome, SERVER_ERROR, "Internal error while storing the image frames",
                       FailureReason.PROCESSING_FAILURE)
    outcome.warnings = (checked.warnings + stored.warnings
                        + discarded_warning(attributes.discarded))
    if keep_warning_reason and outcome.warnings:
        attributes.instance["WarningReason"] = int(outcome.warnings[0].code)
    entry = {
        "DICOM": attributes.instance,
        "DICOMVRs": attributes.vrs,
        "StoredTransferSyntaxUID": str(stored.transfer_syntax_uid),
        "ChecksumType": "DECOMPRESSED",
        "ImageFrames": [frame.as_json() for frame in stored.frames],
    }
    instance = PreparedInstance(
        file.name,
        checked.study_instance_uid,
        checked.series_instance_uid,
        checked.sop_instance_uid,
        attributes,
        entry,
    )
    return outcome, instance


def _failed(
    outcome: FileOutcome, exception_type: str, message: str, reason: FailureReason
) -> tuple[FileOutcome, None]:
    outcome.exception_type, outcome.message, outcome.reason = exception_type, message, reason
    return outcome, None


def _sop_class_uid(checked: CheckedInstance) -> str | None:
    """The SOP Class UID as the instance gives it (no rule requires one), or
    as its file meta does."""
    for dataset, keyword in ((checked.dataset, "SOPClassUID"),
                             (checked.dataset.file_meta, "MediaStorageSOPClassUID")):
        try:
            value = dataset.get(keyword)
        except Exception:  # pydicom raises many types for malformed values
            continue
        if value:
            return str(value)
    return None
