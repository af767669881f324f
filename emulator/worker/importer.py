"""The import worker: list the input prefix, check and read each DICOM file,
group instances into image sets, store metadata and frames, and write the
job's output folder exactly as AWS lays it out (behaviour doc §3)."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from emulator.worker.dicom_json import instance_attributes
from emulator.worker.frames import PutFrame, store_pixel_data
from emulator.worker.grouping import ImageSetsBusy, PreparedInstance, place_instances
from emulator.worker.import_output import (
    CUSTOMER_ERROR,
    SERVER_ERROR,
    FileOutcome,
    OutputNotWritable,
    check_output_writable,
    write_job_output,
)
from emulator.worker.import_warnings import discarded_warning
from emulator.worker.input_objects import read_input_object
from emulator.worker.metadata_mappings import LoadedMappings, load_mappings, mappings_of
from emulator.worker.part10 import InvalidDicomFile, read_instance

if TYPE_CHECKING:
    from emulator.state.models import HealthImagingBackend
    from emulator.state.records import ImportJob

log = logging.getLogger(__name__)

# Files read, decoded and encoded at once within one job. Decoding and HTJ2K
# encoding release the GIL, so threads scale with cores.
FILE_WORKERS = min(8, os.cpu_count() or 1)


class ImportJobFailed(Exception):
    """The job itself cannot run (unlistable input, unwritable output): it ends
    FAILED with this message, unlike per-file errors which go to FAILURE/."""


class ImportStopped(ImportJobFailed):
    """The service is stopping and this import's grace period is over: it
    ends FAILED, and the frames it stored are removed."""

    def __init__(self) -> None:
        super().__init__(
            "The local service stopped during the import; "
            "start a new import job for the same input."
        )


@dataclass(frozen=True)
class InputObject:
    key: str
    size: int


def split_s3_uri(uri: str) -> tuple[str, str]:
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix


def job_output_uri(output_s3_uri: str, datastore_id: str, job_id: str) -> str:
    return f"{output_s3_uri.rstrip('/')}/{datastore_id}-DicomImport-{job_id}/"


def list_input(s3: Any, input_s3_uri: str) -> list[InputObject]:
    """Every object under the prefix, recursively; folder markers excluded."""
    bucket, prefix = split_s3_uri(input_s3_uri)
    found: list[InputObject] = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):
                    found.append(InputObject(item["Key"], item["Size"]))
    except (ClientError, BotoCoreError) as error:
        raise ImportJobFailed(f"Unable to list the input {input_s3_uri}: {error}") from error
    return found


def run_import(job: ImportJob, backend: HealthImagingBackend) -> None:
    """Import every object under the job's input prefix.

    Files are read, checked and their frames stored in parallel; placing the
    instances into image sets then happens once, in input key order, so the
    result does not depend on which thread finished first. An empty input
    prefix completes with nothing scanned (AWS does not document this case).
    """
    s3 = backend.s3_client()
    try:
        check_output_writable(s3, job.output_s3_uri)
    except OutputNotWritable as error:
        raise ImportJobFailed(str(error)) from error
    bucket, prefix = split_s3_uri(job.input_s3_uri)
    mappings = load_mappings(s3, bucket, mappings_of(job, prefix), backend.s3_in_process)
    objects = sorted(
        (o for o in list_input(s3, job.input_s3_uri) if o.key not in mappings.keys),
        key=lambda o: o.key,
    )
    lossless_format = backend.datastores[job.datastore_id].lossless_storage_format
    stored: list[str] = []

    def put_frame(frame_id: str, data: bytes, transfer_syntax_uid: str) -> None:
        _stop_if_cancelled(backend)
        backend.image_sets.put_frame(frame_id, data, transfer_syntax_uid)
        stored.append(frame_id)

    def import_one(obj: InputObject) -> tuple[FileOutcome, PreparedInstance | None]:
        return _import_file(s3, bucket, obj, backend, put_frame, lossless_format, mappings)

    try:
        with ThreadPoolExecutor(FILE_WORKERS, thread_name_prefix="import-file") as pool:
            results = list(pool.map(import_one, objects))
        _stop_if_cancelled(backend)
    except ImportStopped:
        # Every file worker has ended here (the pool's exit waits for them).
        backend.image_sets.discard_frames(stored)
        raise
    prepared = [instance for _, instance in results if instance is not None]
    imported = {(i.study_instance_uid, i.series_instance_uid) for i in prepared}
    outcomes = [outcome for outcome, _ in results]
    outcomes += mappings.failures + mappings.unmatched(imported)
    try:
        placed = place_instances(backend.image_sets, job.datastore_id, prepared)
    except ImageSetsBusy as error:
        raise ImportJobFailed(str(error)) from error
    try:
        write_job_output(s3, job, outcomes, placed.placements, placed.summaries)
    except OutputNotWritable as error:
        raise ImportJobFailed(str(error)) from error


def _stop_if_cancelled(backend: HealthImagingBackend) -> None:
    """Where a stopping service ends an import: before each file and each
    frame, and before the instances are placed (placing and the output then
    run to their end, so an image set is never half written)."""
    if backend.imports_cancelled.is_set():
        raise ImportStopped


def _import_file(
    s3: Any,
    bucket: str,
    obj: InputObject,
    backend: HealthImagingBackend,
    put_frame: PutFrame,
    lossless_format: str,
    mappings: LoadedMappings,
) -> tuple[FileOutcome, PreparedInstance | None]:
    """Read, check and store the frames of one file. The file's own problems
    become its FAILURE line, so one bad file does not stop the job."""
    _stop_if_cancelled(backend)
    limit = backend.config.max_bytes_per_file
    if obj.size > limit:
        return _failed(obj.key, CUSTOMER_ERROR, f"File is {obj.size} bytes; the limit is {limit}")
    try:
        data = read_input_object(s3, bucket, obj.key, backend.s3_in_process)
    except (ClientError, BotoCoreError) as error:
        return _failed(obj.key, SERVER_ERROR, f"Unable to read s3://{bucket}/{obj.key}: {error}")
    try:
        checked = read_instance(data)
    except InvalidDicomFile as error:
        return _failed(obj.key, CUSTOMER_ERROR, str(error))
    mappings.apply(checked.dataset, checked.study_instance_uid, checked.series_instance_uid)
    attributes = instance_attributes(checked.dataset)
    try:
        stored = store_pixel_data(
            checked.dataset,
            checked.transfer_syntax_uid,
            put_frame,
            transcode=backend.config.transcode_htj2k,
            lossless_format=lossless_format,
        )
    except ImportStopped:
        raise
    except Exception:  # a bug or a storage failure here is ours, not the file's
        log.exception("storing the frames of %s failed", obj.key)
        return _failed(obj.key, SERVER_ERROR, "Internal error while storing the image frames")
    entry = {
        "DICOM": attributes.instance,
        "DICOMVRs": attributes.vrs,
        "StoredTransferSyntaxUID": str(stored.transfer_syntax_uid),
        "ChecksumType": "DECOMPRESSED",
        "ImageFrames": [frame.as_json() for frame in stored.frames],
    }
    instance = PreparedInstance(
        obj.key,
        checked.study_instance_uid,
        checked.series_instance_uid,
        checked.sop_instance_uid,
        attributes,
        entry,
    )
    outcome = FileOutcome(obj.key, warnings=checked.warnings + stored.warnings
                          + discarded_warning(attributes.discarded))
    return outcome, instance


def _failed(key: str, exception_type: str, message: str) -> tuple[FileOutcome, None]:
    return FileOutcome(key, exception_type, message), None
