"""Staging: copy each batch's files under its own S3 prefix, the job's input.

HealthImaging imports a whole prefix, so every batch needs a prefix of its
own: ``<staging_prefix>/<run_id>/<batch_id>/<relative path>``. A file already
staged with the same size and SHA-256 (kept in the object's metadata) is not
sent again, so a rerun after a crash costs one HEAD per file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError
from prefect import task
from prefect.cache_policies import NO_CACHE

from config.clients import s3_client
from tasks.batch import Batch
from tasks.locations import S3Uri, is_s3
from tasks.validate import ValidationRecord

CHECKSUM_METADATA_KEY = "sha256"  # sent as x-amz-meta-sha256
# Files are staged in parallel already; one thread per transfer is enough.
_TRANSFER = TransferConfig(use_threads=False)


class StageAction(StrEnum):
    UPLOADED = "uploaded"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class StagedFile:
    source_uri: str
    batch_id: str
    # Key without bucket: the form HealthImaging writes as ``inputFile``.
    key: str
    action: StageAction
    error: str | None = None


def staging_run_id(source: str, datastore: str) -> str:
    """The staging folder name for a (source, datastore) pair.

    Derived from the inputs, never from a clock or a UUID: the job client token
    includes the batch's input prefix, so a rerun after a kill must land on the
    same prefix for HealthImaging to return the job it already started instead
    of importing the batch a second time.
    """
    return hashlib.sha256(f"{source.rstrip('/')}|{datastore}".encode()).hexdigest()[:16]


def batch_input_uri(staging_prefix: str, run_id: str, batch_id: str) -> S3Uri:
    return S3Uri.parse(staging_prefix).join(run_id, batch_id)


def stage_batches(
    batches: Iterable[Batch],
    staging_prefix: str,
    run_id: str,
    concurrency: int = 16,
    s3: Any | None = None,
) -> list[StagedFile]:
    """Stage every file of every batch with a thread pool (S3 calls are I/O bound)."""
    s3 = s3 or s3_client()
    work: list[tuple[ValidationRecord, str, S3Uri]] = []
    for batch in batches:
        prefix = batch_input_uri(staging_prefix, run_id, batch.batch_id)
        for record in batch.files:
            work.append((record, batch.batch_id, prefix.join(record.relative_path)))
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(lambda item: _stage_one(s3, *item), work))


def _stage_one(s3: Any, record: ValidationRecord, batch_id: str, target: S3Uri) -> StagedFile:
    try:
        if _already_staged(s3, target, record):
            action = StageAction.SKIPPED
        else:
            _copy(s3, record, target)
            action = StageAction.UPLOADED
    except (ClientError, BotoCoreError, Boto3Error, OSError) as exc:
        return StagedFile(record.uri, batch_id, target.key, StageAction.FAILED, str(exc))
    return StagedFile(record.uri, batch_id, target.key, action)


def _already_staged(s3: Any, target: S3Uri, record: ValidationRecord) -> bool:
    try:
        head = s3.head_object(Bucket=target.bucket, Key=target.key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return False
        raise
    return (
        head.get("ContentLength") == record.size
        and head.get("Metadata", {}).get(CHECKSUM_METADATA_KEY) == record.sha256
    )


def _copy(s3: Any, record: ValidationRecord, target: S3Uri) -> None:
    metadata = {CHECKSUM_METADATA_KEY: record.sha256 or ""}
    if is_s3(record.uri):
        source = S3Uri.parse(record.uri)
        # Server-side copy: the bytes never pass through this machine.
        s3.copy(
            {"Bucket": source.bucket, "Key": source.key},
            target.bucket,
            target.key,
            ExtraArgs={"Metadata": metadata, "MetadataDirective": "REPLACE"},
            Config=_TRANSFER,
        )
    else:
        s3.upload_file(
            record.uri, target.bucket, target.key,
            ExtraArgs={"Metadata": metadata}, Config=_TRANSFER,
        )


@task(name="stage", cache_policy=NO_CACHE)
def stage(
    batches: list[Batch], staging_prefix: str, run_id: str, concurrency: int = 16
) -> list[StagedFile]:
    return stage_batches(batches, staging_prefix, run_id, concurrency)
