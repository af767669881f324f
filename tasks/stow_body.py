"""A STOW-RS request body: a study's files read from the source into one
``multipart/related`` message, written to a temporary file as they are read.

Nothing is staged: a local file is read where it is, an S3 one with
``GetObject`` (``If-Match`` its ETag as discovered). Each file is read once,
and hashed twice on the way (its own SHA-256 for the report and the ledger,
the body's for the SigV4 signature), so a request of up to 1 GB never sits in
memory and is never read again before it is sent. A file whose size or
version moved since discovery is left out, as staging leaves it out: what is
sent is what was validated.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError

from config.clients import s3_client
from tasks.discover import version_text
from tasks.locations import S3Uri, is_s3
from tasks.stage import SourceChangedError, StagedFile
from tasks.statuses import StageAction
from tasks.validate import ValidationRecord

PART_TYPE = "application/dicom"
_CHUNK = 1 << 20
# The bytes a part adds around a file: its boundary line and header (the
# boundary is 32 characters).
PART_OVERHEAD = 128


@dataclass
class Body:
    """A request body on disk, with what went into it."""

    file: IO[bytes]
    content_type: str
    sha256: str
    length: int
    # The files in the body, in order.
    included: list[ValidationRecord] = field(default_factory=list)
    # Every file given, read (UPLOADED, with its SHA-256) or not (FAILED, why).
    read: list[StagedFile] = field(default_factory=list)


@contextmanager
def request_body(records: Iterable[ValidationRecord], batch_id: str) -> Iterator[Body]:
    """The body of a request sending ``records``, removed when the block ends."""
    boundary = uuid.uuid4().hex
    digest = hashlib.sha256()
    with tempfile.TemporaryFile(prefix="stow-") as out:
        body = Body(out, f'multipart/related; type="{PART_TYPE}"; boundary={boundary}', "", 0)
        s3: Any = None

        def write(data: bytes) -> None:
            out.write(data)
            digest.update(data)

        for record in records:
            if is_s3(record.uri) and s3 is None:
                s3 = s3_client()
            start = out.tell()
            write(f"--{boundary}\r\nContent-Type: {PART_TYPE}\r\n\r\n".encode())
            try:
                sha256 = _copy_source(record, write, s3)
            except (OSError, ClientError, BotoCoreError) as error:
                # The part is taken back: the body goes on without the file.
                out.seek(start)
                out.truncate()
                digest = _rehash(out)
                body.read.append(StagedFile(record.uri, batch_id, record.uri,
                                            StageAction.FAILED, str(error)))
                continue
            write(b"\r\n")
            body.included.append(record)
            body.read.append(StagedFile(record.uri, batch_id, record.uri, StageAction.UPLOADED,
                                        sha256=sha256))
        write(f"--{boundary}--\r\n".encode())
        body.sha256, body.length = digest.hexdigest(), out.tell()
        out.seek(0)
        yield body


def _copy_source(record: ValidationRecord, write: Any, s3: Any) -> str:
    """Copy the file into the body; its SHA-256.

    Raises:
        SourceChangedError: not the file discovery listed.
        OSError, ClientError, BotoCoreError: it could not be read.
    """
    digest = hashlib.sha256()
    size = 0
    with _open_source(record, s3) as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            write(chunk)
        if not is_s3(record.uri):
            _check_local(record, stream)
    if size != record.size:
        raise SourceChangedError(
            f"The file changed after it was validated (now {size} bytes, validated at "
            f"{record.size}); it is left for the next run.")
    return digest.hexdigest()


@contextmanager
def _open_source(record: ValidationRecord, s3: Any) -> Iterator[Any]:
    if not is_s3(record.uri):
        with open(record.uri, "rb") as stream:
            yield stream
        return
    uri = S3Uri.parse(record.uri)
    extra = {"IfMatch": f'"{record.version}"'} if record.version else {}
    try:
        response = s3.get_object(Bucket=uri.bucket, Key=uri.key, **extra)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in {"PreconditionFailed", "412"}:
            raise SourceChangedError("The object changed after it was validated (another "
                                     "ETag); it is left for the next run.") from error
        raise
    stream = response["Body"]
    try:
        yield stream
    finally:
        stream.close()


def _check_local(record: ValidationRecord, stream: Any) -> None:
    now = os.fstat(stream.fileno())
    if record.version and version_text(now.st_mtime) != record.version:
        raise SourceChangedError(
            "The file changed after it was validated (its modification time moved); it is "
            "left for the next run.")


def _rehash(out: IO[bytes]) -> Any:
    """The body's hash from its start, after a part was taken back (rare: a
    file that changed or went while being read)."""
    digest = hashlib.sha256()
    out.seek(0)
    while chunk := out.read(_CHUNK):
        digest.update(chunk)
    return digest
