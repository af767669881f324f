"""Isolating a poison file: retry_failed splits a batch whose job FAILED for
something in its files, so that one file cannot keep its neighbours out of
the data store for ever.

Such a job fails whole, naming no file, and a retry of the same batch fails
alike until the batch is given up. So when a retry's job FAILED for its
content (tasks.retry_policy.job_failure_cause: not access, a quota or the
input prefix, which every part would meet again), its batch is split in
halves, and each half that fails again in halves, until every part is
imported or is one file that failed a job alone: that file is reported
``job_failed`` with HealthImaging's message and error_type ``ISOLATED``, and
is retried only once it changed. The halves of a round run at once: one
poison file among n costs at most ⌈log2 n⌉ rounds, each of one job that
fails and one that imports its half.

A FAILED job may have stored some of its files: before a split imports them
again, the data store is asked (tasks.landed), and those it holds are
reported imported (confirmed).

The parts of a failed job are staged under a folder named after that job
(``split_staging_id``), so their client tokens are the same whenever that
job is split. A retry killed mid-way leaves its jobs for the next retry to
resume: one a retry started that FAILED for its content is split there
(``split_when_resumed``) as the killed retry would have, not imported whole
again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.batch import Batch, seal
from tasks.landed import confirmed_row, find_landed, instance_of
from tasks.locations import S3Uri
from tasks.poll import JobOutcome
from tasks.report import confirmed_after
from tasks.report_row import file_rows
from tasks.retry_policy import job_failure_cause
from tasks.statuses import ISOLATED, FileStatus, JobFailureCause, JobStatus, Landing

_SPLIT = "-split"
# The staging folder names of a retry's own batches (tasks.retry.retry_staging_id).
RETRY_STAGING = "-retry-"


def split_staging_id(datastore_id: str, job_id: str) -> str:
    """The staging folder of the parts of a failed job."""
    digest = hashlib.sha256(f"{datastore_id}|{job_id}".encode()).hexdigest()[:16]
    return f"{digest}{_SPLIT}"


def _failed_for_content(outcome: JobOutcome) -> bool:
    """Only an import job: a STOW-RS request answers per instance, so one
    file never keeps its neighbours out (a request refused whole was
    refused for its body or its access, which every part would meet)."""
    return (outcome.status is JobStatus.FAILED and outcome.job_id is not None
            and outcome.landing is Landing.JOB
            and job_failure_cause(outcome.message) is JobFailureCause.CONTENT)


def failed_for_content(
    batches: Sequence[Batch], outcomes: Sequence[JobOutcome]
) -> list[tuple[Batch, JobOutcome]]:
    """The batches whose job FAILED for its content, with that job's outcome."""
    by_id = {b.batch_id: b for b in batches}
    return [(by_id[o.batch_id], o) for o in outcomes
            if o.batch_id in by_id and _failed_for_content(o)]


def split_when_resumed(input_s3_uri: str, outcome: JobOutcome) -> bool:
    """A job that a retry started (its batch, or a part of one), resumed by a
    later retry after it FAILED for its content: split it, as the retry that
    started it would have."""
    if not _failed_for_content(outcome):
        return False
    # staging/<staging id>/<batch id>/
    folders = S3Uri.parse(input_s3_uri).key.rstrip("/").split("/")
    staging_id = folders[-2] if len(folders) > 1 else ""
    return RETRY_STAGING in staging_id or staging_id.endswith(_SPLIT)


def isolated(batches: Sequence[Batch], outcomes: Sequence[JobOutcome]) -> set[str]:
    """The batches of one file whose job FAILED for its content."""
    single = {b.batch_id for b in batches if len(b.files) == 1}
    return {o.batch_id for o in outcomes if o.batch_id in single and _failed_for_content(o)}


def failed_alone(batch: Batch, rest: Batch | None) -> bool:
    """One file that failed its job alone, and that the data store does not
    hold: isolated, and reported with that job."""
    return rest is batch and len(batch.files) == 1


def mark_isolated(rows: pd.DataFrame, batch_ids: set[str]) -> pd.DataFrame:
    """The report says which files were isolated: their ``error_type``."""
    alone = rows["batch_id"].isin(batch_ids) & (rows["status"] == FileStatus.JOB_FAILED.value)
    return rows.assign(error_type=rows["error_type"].where(~alone, ISOLATED))


def stored_by_failed_job(
    datastore_id: str, batch: Batch, outcome: JobOutcome, imported_before: set[str]
) -> tuple[pd.DataFrame, Batch | None]:
    """The files of a FAILED job that the data store holds, as report rows
    (imported, confirmed), and the batch of the others (None when none is
    left; ``batch`` itself when the data store holds none of them). Files in
    ``imported_before`` (with other bytes: the ledger's) are not looked up."""
    instances = {r.uri: i for r in batch.files
                 if r.uri not in imported_before and (i := instance_of(r))}
    landed = find_landed(datastore_id, instances.values())
    found = {uri: landed[i] for uri, i in instances.items() if i in landed}
    why = confirmed_after(outcome.status, outcome.message)
    rows = file_rows(pd.DataFrame(
        [confirmed_row(r, batch.batch_id, outcome.job_id, found[r.uri], why)
         for r in batch.files if r.uri in found]))
    if not found:
        return rows, batch
    rest = [r for r in batch.files if r.uri not in found]
    return rows, seal(rest) if rest else None


@task(name="find-failed-job-files-in-datastore", cache_policy=NO_CACHE)
def look_up_stored(
    datastore_id: str, batch: Batch, outcome: JobOutcome, imported_before: set[str]
) -> tuple[pd.DataFrame, Batch | None]:
    return stored_by_failed_job(datastore_id, batch, outcome, imported_before)
