"""SHA-256 of a file read in chunks: large files and re-checks of files the
ledger has seen before; small files are hashed from the bytes staging sends."""

from __future__ import annotations

import hashlib
from typing import IO

from config.clients import s3_filesystem
from tasks.locations import S3Uri, is_s3

_CHUNK = 1 << 20


def sha256_of_stream(stream: IO[bytes]) -> str:
    """From the current position to the end."""
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_of_file(uri: str) -> str:
    """Of a local path or an ``s3://`` URI."""
    if is_s3(uri):
        with s3_filesystem().open(S3Uri.parse(uri).path, "rb") as stream:
            return sha256_of_stream(stream)
    with open(uri, "rb") as stream:
        return sha256_of_stream(stream)
