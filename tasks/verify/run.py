"""Verification of a set of imported files: the metadata check for each, then
the pixel check, in that order (a missing instance is never read).

Plain functions; ``verify`` is the Prefect task on top. Files come from an
ingestion's in-memory results (``files_to_verify``) or from the ledger
(``tasks.ledger.imported_files``).

A stop (Ctrl-C, tasks.interruption) ends the reading: the files not read by
then are ``not_checked``, saying so, and the run still reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from config.clients import medical_imaging_client
from config.settings import VerifyMode
from tasks.interruption import stop_requested
from tasks.manifest import JobOutput
from tasks.poll import JobOutcome
from tasks.stage import StagedFile
from tasks.statuses import Verification
from tasks.validate import ValidationRecord
from tasks.verify.metadata import check_metadata, instance_entry, readable_documents
from tasks.verify.pixels import check_pixels
from tasks.verify.results import FileToVerify, FileVerification
from tasks.verify.source import SourceFacts, read_sources

# Plain logging: verify_files runs outside a flow run too (the verify bench,
# its tests); the unchecked files are in the report's verification column.
_log = logging.getLogger(__name__)

# (URIs, whether to decode pixels) -> facts in the same order: a process pool
# here (read_sources) or a Dask cluster (flows.cluster).
SourceReader = Callable[[Sequence[str], bool], Iterable[SourceFacts]]
# Files whose image sets' metadata is held at once: whole image sets are taken
# until a batch has this many files (a larger set is a batch of its own). The
# documents of a migration's data store do not fit in memory together.
BATCH_FILES = 5_000
STOPPED = "verification stopped before this file was checked"


def verify_files(
    datastore_id: str,
    files: Sequence[FileToVerify],
    mode: VerifyMode,
    read: SourceReader,
    client: Any | None = None,
    batch_files: int = BATCH_FILES,
) -> list[FileVerification]:
    """One result per file, in input order (none at all with ``off``)."""
    if mode is VerifyMode.OFF or not files:
        return []
    client = client or medical_imaging_client()
    results: dict[str, FileVerification] = {}
    for batch in _by_image_sets(files, batch_files):
        if stop_requested():
            break
        results.update(_verify_batch(client, datastore_id, batch, mode, read))
    return [results.get(f.source_uri) or FileVerification(
        f.source_uri, Verification.NOT_CHECKED, STOPPED) for f in files]


def _by_image_sets(
    files: Sequence[FileToVerify], batch_files: int
) -> Iterator[list[FileToVerify]]:
    """Whole image sets, together until a batch holds ``batch_files`` files."""
    by_set: dict[str, list[FileToVerify]] = {}
    for item in files:
        by_set.setdefault(item.image_set_id, []).append(item)
    batch: list[FileToVerify] = []
    for members in by_set.values():
        if batch and len(batch) + len(members) > batch_files:
            yield batch
            batch = []
        batch.extend(members)
    if batch:
        yield batch


def _verify_batch(
    client: Any, datastore_id: str, files: list[FileToVerify], mode: VerifyMode,
    read: SourceReader,
) -> dict[str, FileVerification]:
    documents, unreadable = readable_documents(client, datastore_id,
                                               (f.image_set_id for f in files))
    if unreadable:
        _log.warning("Verification could not read %d image sets (%s): their "
                     "files are not checked.", len(unreadable),
                     next(iter(unreadable.values())))
    results: dict[str, FileVerification] = {}
    present: list[tuple[FileToVerify, dict[str, Any]]] = []
    for item in files:
        if item.image_set_id in unreadable:
            results[item.source_uri] = FileVerification(
                item.source_uri, Verification.NOT_CHECKED,
                f"metadata not read: {unreadable[item.image_set_id]}")
            continue
        entry, absent = instance_entry(documents[item.image_set_id], item)
        if absent is not None:
            results[item.source_uri] = absent
        elif entry is not None:
            present.append((item, entry))
    pixels = mode is VerifyMode.PIXELS
    facts = iter(read([item.source_uri for item, _ in present], pixels))
    try:
        for item, entry in present:
            if stop_requested():
                break
            document = documents[item.image_set_id]
            assert document is not None, "an image set with an instance entry has a document"
            results[item.source_uri] = _verdict(document, entry, item, next(facts), pixels)
    finally:
        if isinstance(facts, Generator):
            facts.close()  # a stop: the parts not read yet are dropped
    return results


def _verdict(
    document: dict[str, Any], entry: dict[str, Any], item: FileToVerify, source: SourceFacts,
    pixels: bool,
) -> FileVerification:
    if source.problem and not source.attributes:
        return FileVerification(item.source_uri, Verification.NOT_CHECKED, source.problem)
    result = check_metadata(document, entry, item, source)
    if result.verification is not Verification.VERIFIED or not pixels:
        return result
    return check_pixels(entry, source) or result


def files_to_verify(
    records: Sequence[ValidationRecord],
    staged: Sequence[StagedFile],
    outputs: Mapping[str, JobOutput | str],
    outcomes: Sequence[JobOutcome] = (),
) -> list[FileToVerify]:
    """The files an ingestion's job outputs say were imported (success and
    warning lines), with the image set each went to."""
    uri_of = {s.key: s.source_uri for s in staged}
    job_of = {o.batch_id: o.job_id for o in outcomes}
    landed: dict[str, tuple[str, str | None, str | None]] = {}
    for batch_id, output in outputs.items():
        if isinstance(output, str):
            continue
        for frame in (output.warning, output.success):
            codes = (frame["warningCodes"] if "warningCodes" in frame
                     else [None] * len(frame))
            for key, image_set_id, warned in zip(frame["inputFile"], frame["imageSetId"],
                                                 codes, strict=True):
                uri = uri_of.get(key)
                if uri is not None and image_set_id and uri not in landed:
                    landed[uri] = (image_set_id, job_of.get(batch_id), warned)
    return [
        FileToVerify(r.uri, r.sop_instance_uid, r.study_instance_uid, r.series_instance_uid,
                     *landed[r.uri])
        for r in records
        if r.uri in landed and r.sop_instance_uid and r.study_instance_uid
        and r.series_instance_uid
    ]


def files_in(rows: pd.DataFrame) -> list[FileToVerify]:
    """The files of a ledger selection (tasks.ledger.imported_files)."""
    rows = rows.astype(object).where(rows.notna(), None)
    return [
        FileToVerify(r["source_uri"], r["sop_instance_uid"], r["study_instance_uid"],
                     r["series_instance_uid"], r["image_set_id"], r["job_id"],
                     r["warning_codes"], r.get("reconciled_attributes"))
        for r in rows.to_dict("records")
        if r["image_set_id"] and r["sop_instance_uid"] and r["study_instance_uid"]
        and r["series_instance_uid"]
    ]


def local_reader(workers: int | None) -> SourceReader:
    return lambda uris, pixels: read_sources(uris, pixels, workers)


@task(name="verify", cache_policy=NO_CACHE)
def verify(
    datastore_id: str, files: list[FileToVerify], mode: VerifyMode, read: SourceReader
) -> list[FileVerification]:
    return verify_files(datastore_id, files, mode, read)
