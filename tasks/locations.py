"""Where files live: a local folder or an ``s3://`` prefix, behind one fsspec API.

Every stage that touches storage goes through :func:`filesystem_for`, so local
runs and S3 runs share one code path and differ only in the filesystem object.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from config.clients import s3_filesystem

_SCHEME = "s3://"
# S3's naming rules for general purpose buckets, less the reserved prefixes and
# suffixes, which only matter when creating one (an access point alias ending
# in -s3alias is a valid bucket name to call).
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _bucket_name_problem(bucket: str) -> str | None:
    """Why ``bucket`` cannot be an S3 bucket name, or None when it can be.

    Checked before any request, so that a typo reads as a typo, not as a
    missing or forbidden bucket.
    """
    if not _BUCKET_NAME.fullmatch(bucket):
        return ("bucket names are 3 to 63 lowercase letters, digits, dots and hyphens, "
                "starting and ending with a letter or digit")
    if ".." in bucket:
        return "bucket names have no two dots in a row"
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        return None
    return "bucket names are not IP addresses"


@dataclass(frozen=True)
class S3Uri:
    """A parsed ``s3://bucket/key`` so that bucket/key splitting happens once."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        """The one place an ``s3://`` URI is taken apart.

        Raises:
            ValueError: not ``s3://`` (the scheme is lowercase), or no valid bucket name.
        """
        if not uri.startswith(_SCHEME):
            raise ValueError(f"{uri!r} is not an s3:// URI (s3://bucket/prefix)")
        bucket, _, key = uri[len(_SCHEME) :].partition("/")
        if not bucket:
            raise ValueError(f"{uri!r} has no bucket (s3://bucket/prefix)")
        problem = _bucket_name_problem(bucket)
        if problem:
            raise ValueError(f"{uri!r}: {bucket!r} is not a valid bucket name ({problem})")
        return cls(bucket, key)

    def join(self, *parts: str) -> S3Uri:
        pieces = [self.key.strip("/"), *(p.strip("/") for p in parts)]
        return S3Uri(self.bucket, "/".join(p for p in pieces if p))

    @property
    def path(self) -> str:
        """The fsspec path (bucket/key, no scheme)."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    def __str__(self) -> str:
        return f"{_SCHEME}{self.path}"


def is_s3(location: str) -> bool:
    return location.startswith(_SCHEME)


def fs_path(uri: str) -> str:
    """The fsspec path of a file's URI: ``bucket/key`` for S3 (fsspec paths
    carry no scheme), the path itself for a local file."""
    return S3Uri.parse(uri).path if is_s3(uri) else uri


def meant_s3(location: str) -> bool:
    """Whether a folder-or-prefix option was meant as S3 although it may be
    mistyped (``s3:/bucket``, ``S3://bucket``): better refused as a bad URI
    than read as a relative folder named ``s3:``."""
    return location.lower().startswith("s3:")


def canonical_source(source: str) -> str:
    """The one spelling of a source, whatever the operator typed.

    Everything a rerun must find again (the staging folder, the batches, the
    job client tokens, the ledger's source) is derived from the source, so
    ``in1``, ``./in1/``, ``/data/in1`` and a symlink to it must be one string:
    a folder becomes absolute with links resolved, and neither a folder nor an
    ``s3://`` prefix keeps a trailing slash (a prefix is listed as a folder).
    """
    if meant_s3(source):
        uri = S3Uri.parse(source)
        return str(S3Uri(uri.bucket, uri.key.rstrip("/")))
    return str(Path(source).expanduser().resolve())


def filesystem_for(location: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and fsspec path for a location.

    s3fs gets a fresh instance without the listings cache: a listing of a
    million-object prefix must not stay in memory after discovery.
    """
    if is_s3(location):
        return s3_filesystem(use_listings_cache=False), S3Uri.parse(location).path.rstrip("/")
    return LocalFileSystem(), str(Path(location).expanduser().resolve())


def uri_for(location: str, fs_path: str) -> str:
    """Turn an fsspec path back into the URI form the rest of the pipeline uses."""
    return f"{_SCHEME}{fs_path}" if is_s3(location) else fs_path
