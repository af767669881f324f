"""Retries: which failed files to import again, resuming jobs that nobody read,
and the retry's report.

The kind of failure decides: a server error, a FAILED job or a job we stopped
waiting for may well succeed with the same bytes, so those are retried until
the attempt limit; a file HealthImaging (or our validation) refused for its
content would be refused again, so it is retried only once it changed, or when
the operator forces it.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
from botocore.exceptions import ClientError
from prefect import task
from prefect.cache_policies import NO_CACHE

from config.clients import medical_imaging_client
from tasks.backoff import error_code
from tasks.batch import Batch
from tasks.discover import SourceFile, current_files
from tasks.landed import confirmed_row, find_landed, instance_of
from tasks.ledger import LedgerFile, LedgerJob, RunLedger
from tasks.locations import canonical_source
from tasks.manifest import JobOutput
from tasks.poll import JobOutcome, wait_for_job
from tasks.report import CONFIRMED_IN_DATASTORE, build_file_report, confirmed_after
from tasks.report_row import file_rows
from tasks.retry_policy import retry_class
from tasks.split import RETRY_STAGING
from tasks.stage import StagedFile, staging_run_id
from tasks.statuses import Change, FileStatus, JobStatus, Landing, RetryClass
from tasks.validate import ValidationRecord


@dataclass(frozen=True)
class RetryItem:
    file: SourceFile
    change: Change
    attempts: int


@dataclass(frozen=True)
class RetryPlan:
    # Grouped by the source each file was found under: staging paths are
    # relative to it, and two sources may hold the same relative path.
    by_source: dict[str, list[RetryItem]] = field(default_factory=dict)
    give_up: list[LedgerFile] = field(default_factory=list)
    # Refused for their content, unchanged since, and not forced.
    not_retried: int = 0


def under_source(uri: str, source: str | None) -> bool:
    if not source:
        return True
    root = canonical_source(source)
    return uri == root or uri.startswith(root + "/")


def plan_retry(
    candidates: Sequence[LedgerFile], force: bool, max_attempts: int
) -> RetryPlan:
    """Decide per file: import again, give up, or leave alone.

    A file refused for its content is compared with storage now (one stat
    each; failures are few); a file that is gone is still retried, so that
    its validation reports it unreadable rather than it silently vanishing.
    """
    by_source: dict[str, list[RetryItem]] = defaultdict(list)
    give_up: list[LedgerFile] = []
    not_retried = 0
    current: dict[str, SourceFile | None] = {}
    for source in {c.source for c in candidates}:
        current.update(current_files(source, [c.uri for c in candidates if c.source == source]))
    for item in candidates:
        kind = retry_class(item.status, item.error_type)
        if kind is RetryClass.NEVER:
            continue
        now = current.get(item.uri) or item.as_source_file()
        changed = (now.size, now.version) != (item.size, item.version)
        change = Change.CHANGED if changed else Change.UNCHANGED
        if kind is RetryClass.IF_CHANGED and not (changed or force):
            not_retried += 1
        elif kind is RetryClass.AUTOMATIC and item.attempts >= max_attempts and not (
            changed or force
        ):
            give_up.append(item)
        else:
            by_source[item.source].append(RetryItem(now, change, item.attempts))
    return RetryPlan(dict(by_source), give_up, not_retried)


def retry_staging_id(source: str, datastore_id: str, items: Sequence[RetryItem]) -> str:
    """A staging folder of its own for each retry of the same files.

    The job client token is derived from the batch's input prefix; retrying
    the very batch that failed under the ingestion's prefix would send the
    same token and get the FAILED job back. Attempts go into the name, so a
    rerun of a killed retry (no job started yet, attempts unchanged) lands on
    the same prefix and token again.
    """
    digest = hashlib.sha256(staging_run_id(source, datastore_id).encode())
    for item in sorted(items, key=lambda i: i.file.uri):
        digest.update(f"|{item.file.uri}:{item.attempts}".encode())
    return f"{staging_run_id(source, datastore_id)}{RETRY_STAGING}{digest.hexdigest()[:12]}"


def _output_lost(item: LedgerFile) -> bool:
    """Its job's output could not be read: ``output_missing``, or what earlier
    versions recorded for it (``import_failed`` with ``ManifestError``)."""
    return item.status == FileStatus.OUTPUT_MISSING.value or (
        item.status == FileStatus.IMPORT_FAILED.value and item.error_type == "ManifestError"
    )


def _job_not_trusted(item: LedgerFile) -> bool:
    """Its job ended FAILED, or was not waited for to its end: HealthImaging
    does not say that such a job stored nothing (one stopped half-way may
    have stored some of its files)."""
    return item.status in {FileStatus.JOB_FAILED.value, FileStatus.TIMED_OUT.value}


def settle_lost_outputs(
    ledger: RunLedger, candidates: Sequence[LedgerFile]
) -> tuple[pd.DataFrame, list[LedgerFile]]:
    """Files whose job output was lost, or whose job FAILED or was not waited
    for, are looked up in the data store before anything is imported again:
    those it holds are recorded imported (and returned as report rows), never
    imported twice; the rest go on to be retried. Only files this run wins a
    claim on are recorded. Not a failed job's file that some run imported
    with other bytes: the data store holding its instance would not tell
    which bytes it holds."""
    after_failure = [c for c in candidates if _job_not_trusted(c) and instance_of(c)]
    other_bytes = ledger.imported_as_other_bytes({c.uri: c.sha256 for c in after_failure})
    doubtful = [c for c in candidates if instance_of(c) and (
        _output_lost(c) or (_job_not_trusted(c) and c.uri not in other_bytes))]
    if not doubtful:
        return file_rows(pd.DataFrame()), list(candidates)
    won = {f.uri for f in ledger.claim_known(
        [(c.as_source_file(), Change.UNCHANGED) for c in doubtful]).files}
    doubtful = [c for c in doubtful if c.uri in won]
    landed = find_landed(ledger.datastore_id, [i for c in doubtful if (i := instance_of(c))])
    found = {c.uri: (c, landed[i]) for c in doubtful if (i := instance_of(c)) in landed}
    rows = file_rows(pd.DataFrame(
        [confirmed_row(item, item.batch_id, item.job_id, where, _confirmed(item))
         for item, where in found.values()]))
    if found:
        rows = ledger.record_outcomes(rows)
    return rows, [c for c in candidates if c.uri not in found]


def _confirmed(item: LedgerFile) -> str:
    if item.status == FileStatus.JOB_FAILED.value:
        return confirmed_after(JobStatus.FAILED, item.reason)
    if item.status == FileStatus.TIMED_OUT.value:
        return confirmed_after(JobStatus.TIMED_OUT, item.reason)
    return f"{CONFIRMED_IN_DATASTORE}{item.reason or 'an earlier run found it missing'})"


@task(name="find-lost-outputs-in-datastore", cache_policy=NO_CACHE)
def look_up_lost_outputs(
    ledger: RunLedger, candidates: list[LedgerFile]
) -> tuple[pd.DataFrame, list[LedgerFile]]:
    return settle_lost_outputs(ledger, candidates)


@task(name="plan-retry", cache_policy=NO_CACHE)
def plan(candidates: list[LedgerFile], force: bool, max_attempts: int) -> RetryPlan:
    return plan_retry(candidates, force, max_attempts)


@task(name="resume-job", cache_policy=NO_CACHE)
def resume_job(job: LedgerJob, poll_interval: float, poll_timeout: float) -> JobOutcome:
    """Wait for a job another run started (it may have ended long ago).

    A STOW-RS request has nothing to wait for: its run died before its
    answer was recorded, so it is taken as a job that FAILED, whose files
    are looked up in the data store before any is sent again (those it
    holds are reported imported, never stored twice)."""
    if job.landing is Landing.STOW:
        return JobOutcome(job.batch.batch_id, job.datastore_id, job.job_id, JobStatus.FAILED,
                          "The answer to this STOW-RS request was never recorded.",
                          input_s3_uri=job.input_s3_uri, landing=Landing.STOW)
    try:
        return wait_for_job(
            medical_imaging_client(), job.datastore_id, job.job_id, job.batch.batch_id,
            poll_interval=poll_interval, timeout=poll_timeout,
        )
    except ClientError as exc:
        # Jobs are listed for 90 days; an older one can no longer be read.
        return JobOutcome(job.batch.batch_id, job.datastore_id, job.job_id, JobStatus.FAILED,
                          f"GetDICOMImportJob failed with {error_code(exc)}: {exc}",
                          input_s3_uri=job.input_s3_uri)


@task(name="report", cache_policy=NO_CACHE)
def retry_report(
    records: list[ValidationRecord],
    batches: list[Batch],
    staged: list[StagedFile],
    outcomes: list[JobOutcome],
    outputs: dict[str, JobOutput | str],
    include_phi: bool,
) -> pd.DataFrame:
    """The ingestion report's rows for the files this retry imported; the flow
    records them, then adds the files given up and those found in the data
    store (which had no job here, and are recorded already)."""
    return build_file_report(records, batches, staged, outcomes, outputs, include_phi)


def with_recorded(files: pd.DataFrame, *recorded: pd.DataFrame | None) -> pd.DataFrame:
    """In the order the rows were recorded, as a report rebuilt from the ledger has them."""
    earlier = [r.reindex(columns=files.columns) for r in recorded if r is not None and not r.empty]
    return pd.concat([*earlier, files], ignore_index=True) if earlier else files
