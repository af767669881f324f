"""The import worker: list the input prefix, store its files through the
path STOW-RS shares (``storing``), and write the job's output folder exactly
as AWS lays it out (behaviour doc §3)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from emulator.worker.grouping import ImageSetsBusy
from emulator.worker.import_output import (
    OutputNotWritable,
    check_output_writable,
    write_job_output,
)
from emulator.worker.input_objects import read_input_object
from emulator.worker.metadata_mappings import load_mappings, mappings_of
from emulator.worker.storing import InputFile, InputUnreadable, StoringStopped, store_files

if TYPE_CHECKING:
    from emulator.state.models import HealthImagingBackend
    from emulator.state.records import ImportJob


class ImportJobFailed(Exception):
    """The job itself cannot run (unlistable input, unwritable output): it ends
    FAILED with this message, unlike per-file errors which go to FAILURE/."""


class ImportStopped(ImportJobFailed):
    """The service is stopping and this import's grace period is over: it
    ends FAILED, and what it stored is removed."""

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


def run_import(
    job: ImportJob, backend: HealthImagingBackend, before_placing: Callable[[], None]
) -> None:
    """Import every object under the job's input prefix, through the path
    STOW-RS shares (``storing``), in input key order.

    Placing comes last, after ``before_placing`` (which holds the job for an
    injected duration, and may raise ``ImportStopped``): until then a reader
    sees nothing of the job but frames no set names. Whatever the job wrote
    is marked with its ID, and the backend removes it if the job ends FAILED.
    An empty input prefix completes with nothing scanned (AWS does not
    document this case).
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
    files = [
        InputFile(o.key, o.size, partial(_read_object, s3, bucket, o.key, backend.s3_in_process))
        for o in objects
    ]
    try:
        stored = store_files(
            backend, job.datastore_id, files, job.job_id,
            prepare=lambda checked: mappings.apply(
                checked.dataset, checked.study_instance_uid, checked.series_instance_uid),
            before_placing=before_placing,
        )
    except StoringStopped:
        raise ImportStopped from None
    except ImageSetsBusy as error:
        raise ImportJobFailed(str(error)) from error
    outcomes = stored.outcomes + mappings.failures + mappings.unmatched(stored.series)
    try:
        write_job_output(s3, job, outcomes, stored.summaries)
    except OutputNotWritable as error:
        raise ImportJobFailed(str(error)) from error


def _read_object(s3: Any, bucket: str, key: str, in_process: bool) -> bytes:
    try:
        return read_input_object(s3, bucket, key, in_process)
    except (ClientError, BotoCoreError) as error:
        raise InputUnreadable(f"Unable to read s3://{bucket}/{key}: {error}") from error
