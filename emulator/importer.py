"""The import worker: list the input prefix, check and read each DICOM file,
group instances into image sets, store metadata and frames, and write the
job's output folder exactly as AWS lays it out (behaviour doc §3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from emulator.models import HealthImagingBackend


class ImportJobFailed(Exception):
    """The job itself cannot run (unlistable input, unwritable output): it ends
    FAILED with this message, unlike per-file errors which go to FAILURE/."""


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


def run_import(job: dict[str, Any], backend: HealthImagingBackend) -> None:
    raise NotImplementedError
