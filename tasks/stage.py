"""Staging: copy each batch's files under its own S3 prefix, the job's input.

HealthImaging imports a whole prefix, so every batch needs a prefix of its
own: ``<staging_prefix>/<run_id>/<batch_id>/<relative path>``. A file already
staged from the same version of the source (size, and mtime or ETag, kept in
the object's metadata) is not sent again. One listing per batch says which
keys exist, so a first run sends one request per file (a PUT) and a rerun
after a crash one HEAD per file already there.

This is where a local file's bytes are read: once up to the single-PUT
size, where their SHA-256 goes with the PUT (``x-amz-checksum-sha256``, so S3
refuses bytes damaged on the way); twice above it, since the SHA-256 must be
in the object's metadata before the first part goes. It also goes into the
report. A file whose size or mtime moved since discovery is not staged: what
is imported is what was validated.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError
from prefect import task
from prefect.cache_policies import NO_CACHE

from config.clients import s3_client
from tasks.batch import Batch
from tasks.checksum import sha256_of_stream
from tasks.discover import version_text
from tasks.interruption import stop_requested
from tasks.locations import S3Uri, is_s3
from tasks.statuses import StageAction
from tasks.validate import ValidationRecord

CHECKSUM_METADATA_KEY = "sha256"  # sent as x-amz-meta-sha256
VERSION_METADATA_KEY = "source-version"  # the source's mtime or ETag
# Files are staged in parallel already; one thread per transfer is enough.
_TRANSFER = TransferConfig(use_threads=False)
# Up to this size a file is one PutObject; larger ones go in parts, each
# retried on its own.
_SINGLE_PUT_MAX = _TRANSFER.multipart_threshold


@dataclass(frozen=True)
class StagedFile:
    source_uri: str
    batch_id: str
    # Key without bucket: the form HealthImaging writes as ``inputFile``.
    key: str
    action: StageAction
    error: str | None = None
    # Of the bytes sent (local sources); None for server-side copies.
    sha256: str | None = None


class SourceChangedError(OSError):
    """The file's size or mtime moved after discovery: it was not the file validated."""


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
    if stop_requested():
        return StagedFile(record.uri, batch_id, target.key, StageAction.INTERRUPTED)
    try:
        maybe_there = existing is None or existing.get(target.key) == record.size
        metadata = _already_staged(s3, target, record) if maybe_there else None
        if metadata is not None:
            return StagedFile(record.uri, batch_id, target.key, StageAction.SKIPPED,
                              sha256=metadata.get(CHECKSUM_METADATA_KEY))
        digest = _copy(s3, record, target)
    except (ClientError, BotoCoreError, Boto3Error, OSError) as exc:
        return StagedFile(record.uri, batch_id, target.key, StageAction.FAILED, str(exc))
    return StagedFile(record.uri, batch_id, target.key, StageAction.UPLOADED, sha256=digest)


def _already_staged(s3: Any, target: S3Uri, record: ValidationRecord) -> dict[str, str] | None:
    """The staged object's metadata when it was staged from this version of the file."""
    if not record.version:
        return None
    try:
        head = s3.head_object(Bucket=target.bucket, Key=target.key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise
    metadata: dict[str, str] = head.get("Metadata", {})
    same = (head.get("ContentLength") == record.size
            and metadata.get(VERSION_METADATA_KEY) == record.version)
    return metadata if same else None


def _copy(s3: Any, record: ValidationRecord, target: S3Uri) -> str | None:
    """Send the file; returns the SHA-256 of what was sent (None for a server-side copy)."""
    metadata = {VERSION_METADATA_KEY: record.version or ""}
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
        return None
    with open(record.uri, "rb") as source_file:
        if record.size <= _SINGLE_PUT_MAX:
            # Read once: hashed, then sent. (A body under 2 MB goes without
            # waiting for "100 Continue": config.clients.s3_client.)
            body = source_file.read()
            _check_unchanged(record, source_file)
            digest = hashlib.sha256(body)
            metadata[CHECKSUM_METADATA_KEY] = digest.hexdigest()
            s3.put_object(
                Bucket=target.bucket, Key=target.key, Body=body, Metadata=metadata,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(digest.digest()).decode(),
            )
            return metadata[CHECKSUM_METADATA_KEY]
        metadata[CHECKSUM_METADATA_KEY] = sha256_of_stream(source_file)
        _check_unchanged(record, source_file)
        source_file.seek(0)
        s3.upload_fileobj(source_file, target.bucket, target.key,
                          ExtraArgs={"Metadata": metadata}, Config=_TRANSFER)
        return metadata[CHECKSUM_METADATA_KEY]


def _check_unchanged(record: ValidationRecord, source_file: Any) -> None:
    """After reading: the file is still the one discovery listed and validation read."""
    now = os.fstat(source_file.fileno())
    if now.st_size != record.size or (
        record.version and version_text(now.st_mtime) != record.version
    ):
        raise SourceChangedError(
            f"The file changed after it was validated (now {now.st_size} bytes, "
            f"validated at {record.size}); it is left for the next run."
        )


def with_checksums(batches: Iterable[Batch], staged: Iterable[StagedFile]) -> list[Batch]:
    """The batches with each record's SHA-256 as staged, for the ledger."""
    digests = {s.source_uri: s.sha256 for s in staged if s.sha256 is not None}
    return [
        replace(item, files=tuple(
            replace(record, sha256=digests.get(record.uri, record.sha256))
            for record in item.files
        ))
        for item in batches
    ]


@task(name="stage", cache_policy=NO_CACHE)
def stage(
    batches: list[Batch], staging_prefix: str, run_id: str, concurrency: int = 16
) -> list[StagedFile]:
    return stage_batches(batches, staging_prefix, run_id, concurrency)
