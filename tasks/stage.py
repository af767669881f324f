"""Staging: copy each batch's files under its own S3 prefix, the job's input.

HealthImaging imports a whole prefix, so every batch needs a prefix of its
own: ``<staging_prefix>/<run_id>/<batch_id>/<relative path>``. A file already
staged with the same size and SHA-256 (kept in the object's metadata) is not
sent again. One listing per batch says which keys exist, so a first run sends
one request per file (a PUT) and a rerun after a crash one HEAD per file
already there.

Each PUT carries the SHA-256 computed at validation (``x-amz-checksum-sha256``):
S3 refuses the upload if the file changed since it was validated, so what is
imported is what was validated, batched and recorded.
"""

from __future__ import annotations

import base64
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
# Up to this size a file is one PutObject; larger ones go in parts, each
# retried on its own.
_SINGLE_PUT_MAX = _TRANSFER.multipart_threshold


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
    work: list[tuple[ValidationRecord, str, S3Uri, dict[str, int] | None]] = []
    prefixes = [(batch, batch_input_uri(staging_prefix, run_id, batch.batch_id))
                for batch in batches]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        listings = pool.map(lambda item: _existing(s3, item[1]), prefixes)
        for (batch, prefix), existing in zip(prefixes, listings, strict=True):
            for record in batch.files:
                work.append((record, batch.batch_id, prefix.join(record.relative_path),
                             existing))
        return list(pool.map(lambda item: _stage_one(s3, *item), work))


def _existing(s3: Any, prefix: S3Uri) -> dict[str, int] | None:
    """Size by key of what is already under the batch's prefix; None when it
    cannot be listed (a role without s3:ListBucket): then each file is checked."""
    sizes: dict[str, int] = {}
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=prefix.bucket, Prefix=f"{prefix.key}/"
        )
        for page in pages:
            for item in page.get("Contents", []):
                sizes[item["Key"]] = item["Size"]
    except (ClientError, BotoCoreError):
        return None
    return sizes


def _stage_one(
    s3: Any,
    record: ValidationRecord,
    batch_id: str,
    target: S3Uri,
    existing: dict[str, int] | None,
) -> StagedFile:
    try:
        maybe_there = existing is None or existing.get(target.key) == record.size
        if maybe_there and _already_staged(s3, target, record):
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
    elif record.size <= _SINGLE_PUT_MAX and record.sha256:
        # Bytes, not the open file: botocore sends a file object with
        # "Expect: 100-continue", a round trip per file for nothing here.
        with open(record.uri, "rb") as source_file:
            body = source_file.read()
        s3.put_object(
            Bucket=target.bucket, Key=target.key, Body=body, Metadata=metadata,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(bytes.fromhex(record.sha256)).decode(),
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
