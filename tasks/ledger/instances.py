"""SOP instances the data store already holds with a file's very bytes,
imported from another file: the folder imported last week, and now its copy
in S3. Such a file is unchanged as far as the data store goes, and is
skipped like one (unless the operator asks to reimport): importing it again
would only make a new version of the image set, or undo what ``reconcile``
corrected since.

The ledger knows each file's SOP Instance UID (indexed per data store), the
SHA-256 of what was staged, and its latest outcome. The data store is taken
to hold an instance with these bytes only when every file of that instance
that may have put bytes there was imported with exactly these: one imported
with other bytes, or whose job nobody saw end, or that verification found
changed, leaves the file to be imported as any other. A file imported from
S3 was copied within S3 and never hashed: its copies elsewhere are imported
again.

Only files that could be such a copy are read (a file of an instance the
data store holds, at the size imported); their SHA-256 goes into the report
and the ledger, so the next run skips them without reading.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.checksum import sha256_of_file
from tasks.ledger.files import IMPORTED
from tasks.ledger.part import LedgerPart
from tasks.ledger.schema import chunks, files_table
from tasks.statuses import FileStatus, FileValidity
from tasks.validate import ValidationRecord

# Outcomes after which the data store may hold a file's bytes: imported, or
# not known not to be (a job that failed or was not seen to end, an output
# nobody could read, bytes verification found different).
_MAY_HOLD = frozenset({
    *IMPORTED, FileStatus.VERIFY_MISMATCH.value, FileStatus.OUTPUT_MISSING.value,
    FileStatus.SUBMITTED.value, FileStatus.TIMED_OUT.value, FileStatus.JOB_FAILED.value,
})
# Files read at once: from S3 each read is mostly waiting.
_READERS = 8


@dataclass(frozen=True)
class HeldFile:
    """A file whose import put an instance's bytes in the data store."""

    uri: str
    source: str
    job_id: str | None
    size: int | None
    sha256: str


def held_instances(
    ledger: LedgerPart, sop_instance_uids: Sequence[str]
) -> dict[str, list[HeldFile]]:
    """For each of these instances the data store holds with one known set of
    bytes, the files imported with them, latest first; instances in doubt
    (see the module's docstring) are left out."""
    found: dict[str, list[Any]] = defaultdict(list)
    table = files_table.c
    with ledger.engine.begin() as conn:
        for chunk in chunks(sorted(set(sop_instance_uids))):
            for row in conn.execute(
                sa.select(table.uri, table.source, table.sop_instance_uid, table.status,
                          table.sha256, table.size, table.job_id, table.updated_at)
                .where(table.datastore_id == ledger.datastore_id,
                       table.sop_instance_uid.in_(chunk),
                       table.status.in_(sorted(_MAY_HOLD)))
            ):
                found[row.sop_instance_uid].append(row)
    held: dict[str, list[HeldFile]] = {}
    for sop, rows in found.items():
        if all(row.status in IMPORTED for row in rows) and len(
            {row.sha256 for row in rows}
        ) == 1 and rows[0].sha256:
            held[sop] = [HeldFile(row.uri, row.source, row.job_id, row.size, row.sha256)
                         for row in sorted(rows, key=lambda row: row.updated_at, reverse=True)]
    return held


def mark_imported_elsewhere(
    ledger: LedgerPart, records: Sequence[ValidationRecord]
) -> tuple[list[ValidationRecord], Counter[str]]:
    """The records, those whose instance the data store holds with their
    bytes from another file marked ``already_imported`` (with their SHA-256
    and that file named); and how many were so marked, by the other file's
    source."""
    held = held_instances(ledger, [r.sop_instance_uid for r in records
                                   if r.is_valid and r.sop_instance_uid])
    candidates: dict[str, HeldFile] = {}
    for record in records:
        if not record.is_valid or record.sop_instance_uid not in held:
            continue
        others = [f for f in held[record.sop_instance_uid] if f.uri != record.uri]
        if others and others[0].size == record.size:
            candidates[record.uri] = others[0]
    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        digests = dict(zip(candidates, pool.map(_sha256_or_none, candidates), strict=True))
    marked: list[ValidationRecord] = []
    sources = Counter[str]()
    for record in records:
        earlier = candidates.get(record.uri)
        if earlier is not None and digests[record.uri] == earlier.sha256:
            marked.append(_already_imported(record, earlier))
            sources[earlier.source] += 1
        else:
            marked.append(record)
    return marked, sources


def _sha256_or_none(uri: str) -> str | None:
    """Unreadable now: it is left to staging, which reports why."""
    try:
        return sha256_of_file(uri)
    except OSError:
        return None


def _already_imported(record: ValidationRecord, earlier: HeldFile) -> ValidationRecord:
    job = f", job {earlier.job_id}" if earlier.job_id else ""
    return replace(
        record,
        status=FileValidity.ALREADY_IMPORTED,
        sha256=earlier.sha256,
        reason_message=f"Skipped as unchanged: the data store holds SOPInstanceUID "
        f"{record.sop_instance_uid} with the same SHA-256, imported from {earlier.uri} "
        f"(source {earlier.source}{job}). Reimport (--reimport) imports it again.",
    )


@task(name="skip-imported-elsewhere", cache_policy=NO_CACHE)
def skip_imported_elsewhere(
    ledger: LedgerPart, records: list[ValidationRecord], skip: bool
) -> tuple[list[ValidationRecord], Counter[str]]:
    if not skip:
        return list(records), Counter()
    return mark_imported_elsewhere(ledger, records)
