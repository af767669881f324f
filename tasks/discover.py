"""Discovery: list every object under a source folder or S3 prefix.

The listing is a generator so that a source with millions of objects is never
held in memory at once, and it is depth-first in name order so that two runs
over the same source see the files in the same order (batches, duplicate
resolution and run IDs all depend on that order).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.locations import filesystem_for, fs_path, uri_for


class SourceError(Exception):
    """The source cannot be ingested as given; the message says what to fix."""


class SourceNotFoundError(SourceError):
    pass


class SourceEmptyError(SourceError):
    pass


@dataclass(frozen=True)
class SourceFile:
    uri: str
    size: int
    # Local mtime or S3 ETag: tells a changed file from an unchanged one.
    version: str
    # Path below the source root, reused as the staged key suffix.
    relative_path: str


def iter_source(source: str) -> Iterator[SourceFile]:
    """Yield every object under ``source`` (local folder or ``s3://bucket/prefix``).

    Raises:
        SourceNotFoundError: the folder, bucket or prefix does not exist.
        SourceEmptyError: it exists but holds no objects (raised once the walk ends).
    """
    fs, root = filesystem_for(source)
    found = 0
    try:
        for entry in _walk(fs, root):
            found += 1
            yield _to_source_file(source, root, entry)
    except FileNotFoundError as exc:
        raise source_not_found(source) from exc
    except NotADirectoryError as exc:
        raise source_not_a_folder(source) from exc
    if not found:
        raise SourceEmptyError(f"Source {source!r} contains no files; nothing to ingest.")


def source_not_found(source: str) -> SourceNotFoundError:
    """One message for a missing source, whether the pre-flight check or the
    walk finds out."""
    return SourceNotFoundError(
        f"Source {source!r} does not exist (no such folder, bucket or prefix)."
    )


def source_not_a_folder(source: str) -> SourceNotFoundError:
    return SourceNotFoundError(f"Source {source!r} is not a folder or prefix.")


def _walk(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[dict[str, Any]]:
    # One ls per folder (one delimiter listing on S3); names sorted so the
    # output is in the same order on every run and every filesystem.
    entries = sorted(fs.ls(path, detail=True), key=lambda e: e["name"])
    for entry in entries:
        if entry["type"] == "directory":
            if entry["name"].rstrip("/") != path.rstrip("/"):
                yield from _walk(fs, entry["name"])
        elif not entry["name"].endswith("/"):  # S3 "folder marker" objects
            yield entry


def _to_source_file(source: str, root: str, entry: dict[str, Any]) -> SourceFile:
    name: str = entry["name"]
    relative = name[len(root) :].lstrip("/") or name.rsplit("/", 1)[-1]
    return SourceFile(
        uri=uri_for(source, name),
        size=int(entry["size"]),
        version=version_text(entry.get("ETag") or entry.get("mtime") or ""),
        relative_path=relative,
    )


def version_text(value: object) -> str:
    """A file's version as recorded: the S3 ETag unquoted, or the local mtime
    (``st_mtime``) as text, so that a later stat compares equal to it."""
    return str(value).strip('"')


def current_files(source: str, uris: list[str]) -> dict[str, SourceFile | None]:
    """These files of ``source`` as they are now (None: gone), described exactly
    as discovery would, so a retry can tell whether one changed since."""
    fs, root = filesystem_for(source)
    found: dict[str, SourceFile | None] = {}
    for uri in uris:
        try:
            entry = fs.info(fs_path(uri))
        except FileNotFoundError:
            found[uri] = None
        else:
            found[uri] = _to_source_file(source, root, entry)
    return found


@task(name="discover", cache_policy=NO_CACHE)
def discover(source: str) -> list[SourceFile]:
    """Materialise the listing: the flow needs it twice (validation, report)."""
    return list(iter_source(source))
