"""What the source file says, read again at verification time.

Verification compares the data store with the files as they are now, not
with what an earlier run recorded: a ledger row holds no patient
attributes (PHI stays out of it) and no pixels. ``metadata`` reads the
header only (up to Pixel Data); ``pixels`` reads the whole file and decodes
every frame. Reading runs where validation runs: a process pool on this
machine, or the Dask cluster (``flows/cluster.py``).
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import IO, Any

import numpy as np
import pydicom
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, parse_basic_offsets
from pydicom.pixels import iter_pixels
from pydicom.uid import DeflatedExplicitVRLittleEndian

from config.clients import s3_filesystem
from import_rules.rules import VIDEO_TRANSFER_SYNTAXES, stored_frame_count
from tasks.locations import S3Uri, is_s3
from tasks.worker_processes import worker_pool

# The attributes compared, by level of the metadata document: those
# HealthImaging indexes an image set by (SearchImageSets' DICOMTags).
COMPARED_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "Patient": ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"),
    "Study": ("StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "AccessionNumber",
              "StudyDescription"),
    "Series": ("SeriesInstanceUID", "SeriesNumber", "Modality", "BodyPartExamined"),
}
# Files per unit of work on a pool process: enough to amortise the hand-over.
_CHUNK = 32
_S3_REQUEST = 64 << 10


@dataclass(frozen=True)
class SourceFacts:
    """A source file as verification compares it. Holds attribute values
    (PHI among them) only to compare them: never logged or reported."""

    source_uri: str
    attributes: dict[str, str | None]
    frames: int
    # CRC-32 of each decoded frame (pixels mode); None when not computed.
    checksums: tuple[int, ...] | None = None
    # Why the source could not be read or decoded (no value in it).
    problem: str | None = None


def read_source(uri: str, pixels: bool, fs: Any | None = None) -> SourceFacts:
    try:
        with _open(uri, fs) as fileobj, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not pixels:
                ds = pydicom.dcmread(fileobj, stop_before_pixels=True)
                # Reading stops at Pixel Data: anything left is pixel data;
                # but a deflated data set is inflated whole before reading.
                if ds.file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
                    has_pixels = fileobj.tell() < _size(fileobj)
                    return SourceFacts(uri, _attributes(ds), _frames(ds, has_pixels))
                fileobj.seek(0)
            ds = pydicom.dcmread(fileobj)
    except Exception as error:  # pydicom raises many types for a damaged file
        return SourceFacts(uri, {}, 0, problem=f"source unreadable ({type(error).__name__})")
    facts = SourceFacts(uri, _attributes(ds), _frames(ds, "PixelData" in ds))
    if not pixels:
        return facts
    try:
        checksums = tuple(frame_checksums(ds))
    except Exception as error:  # no decoder installed, or a decoder failure
        return SourceFacts(uri, facts.attributes, facts.frames,
                           problem=f"source frames not decodable here ({type(error).__name__})")
    return SourceFacts(uri, facts.attributes, facts.frames, checksums)


def frame_checksums(ds: Dataset) -> Iterator[int]:
    """CRC-32 of each frame as HealthImaging computes it: of the decoded
    samples (as stored, no colour conversion), interleaved, little-endian, one
    byte per sample up to 8 bits and two up to 16; of the whole stream for a
    video. See docs/healthimaging.md, "Pixel checksums"."""
    if "PixelData" not in ds:
        return
    if str(ds.file_meta.TransferSyntaxUID) in VIDEO_TRANSFER_SYNTAXES:
        pixel_data = BytesIO(ds.PixelData)
        parse_basic_offsets(pixel_data)  # the offset table is no part of the stream
        yield zlib.crc32(b"".join(generate_fragments(pixel_data)))
        return
    for frame in iter_pixels(ds, as_rgb=False):
        little = np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<"))
        yield zlib.crc32(little.data)


def read_sources(uris: Sequence[str], pixels: bool, workers: int | None) -> Iterator[SourceFacts]:
    """In input order, each part as soon as it is read, so that the caller's
    verdicts overlap the reading of the rest; on ``workers`` processes
    (default one per core), or in this process for one worker or a handful
    of files."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(uris) <= _CHUNK:
        yield from _read_each(uris, pixels)
        return
    chunks = [list(uris[i:i + _CHUNK]) for i in range(0, len(uris), _CHUNK)]
    pool = worker_pool(workers)
    try:
        for part in pool.map(read_part, chunks, [pixels] * len(chunks)):
            yield from part
    finally:
        # Closed early (a stop): the parts no worker has begun are dropped.
        pool.shutdown(cancel_futures=True)


def read_part(uris: list[str], pixels: bool) -> list[SourceFacts]:
    """One unit of work: a pool process's or a cluster worker's share."""
    return list(_read_each(uris, pixels))


def _read_each(uris: Sequence[str], pixels: bool) -> Iterator[SourceFacts]:
    fs = s3_filesystem() if any(is_s3(u) for u in uris) else None
    return (read_source(uri, pixels, fs) for uri in uris)


# Reading is idempotent: a part lost with its worker is read again.
@task(name="verify-read-part", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def read_sources_part(uris: list[str], decode_frames: bool) -> list[SourceFacts]:
    """A cluster worker's share (flows.cluster)."""
    return read_part(uris, decode_frames)


def _open(uri: str, fs: Any | None) -> IO[bytes]:
    if is_s3(uri):
        assert fs is not None, "an S3 source is read through an s3fs filesystem"
        handle: IO[bytes] = fs.open(S3Uri.parse(uri).path, "rb", block_size=_S3_REQUEST,
                                    cache_type="readahead")
        return handle
    return open(uri, "rb")


def _size(fileobj: Any) -> int:
    size = getattr(fileobj, "size", None)
    return int(size) if size is not None else os.fstat(fileobj.fileno()).st_size


def _frames(ds: Dataset, has_pixels: bool) -> int:
    syntax = ds.file_meta.get("TransferSyntaxUID")
    written = ds.get("NumberOfFrames")
    return stored_frame_count(str(syntax) if syntax else None,
                              None if written is None else str(written), has_pixels)


def _attributes(ds: Dataset) -> dict[str, str | None]:
    return {keyword: normalized(ds.get(keyword))
            for keywords in COMPARED_ATTRIBUTES.values() for keyword in keywords}


def normalized(value: Any) -> str | None:
    """One spelling for a value read by pydicom or from the metadata JSON:
    multiple values joined by backslash, padding dropped, empty as None."""
    if value is None:
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        text = "\\".join("" if v is None else str(v) for v in value)
    else:
        text = str(value)
    text = text.strip(" \x00")
    return text or None
