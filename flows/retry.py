"""The ``dicom-retry-failed`` flow: finish what earlier runs left failed or
unfinished, from the ledger's record of them.

First the jobs that some run started but never read (it died, or stopped
waiting): they are waited for and their output read, so nothing is imported
twice. Then the failed files, chosen by the kind of failure (tasks.retry),
go through the same stage-and-import path as an ingestion.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from flows.ingest import import_batches, publish, validate_sources
from flows.parameters import RetryParameters
from flows.run_identity import datastore_tags, retry_run_name, run_ledger, tag_current_run
from tasks.batch import Batch, batch
from tasks.import_jobs import resolve
from tasks.job_slots import ensure_job_slots
from tasks.landed import confirm_lost_outputs
from tasks.ledger import LedgerFile, LedgerJob, RunLedger
from tasks.manifest import job_outputs
from tasks.poll import JobOutcome
from tasks.preflight import preflight
from tasks.report import (
    build_job_summary,
    job_rows,
    status_counts,
    write_report,
)
from tasks.retry import (
    look_up_lost_outputs,
    plan,
    resume_job,
    retry_report,
    retry_staging_id,
    under_source,
    with_recorded,
)
from tasks.stage import StagedFile
from tasks.statuses import Change, FileStatus, JobStatus, StageAction
from tasks.validate import ValidationRecord

RETRY_JOBS_ARTIFACT_KEY = "dicom-retry-jobs"
RETRY_SUMMARY_ARTIFACT_KEY = "dicom-retry-summary"


class RetryResult(BaseModel):
    datastore_id: str
    datastore_name: str | None = None
    resumed_jobs: int
    retried_files: int
    # Import jobs started by this retry (resumed ones not included).
    jobs: int
    counts: dict[str, int]
    not_retried_unchanged: int
    report_files_parquet: str
    report_jobs_parquet: str


# Prefect's types reject its own ThreadPoolTaskRunner here (PrefectHQ/prefect#16938).
@flow(name="dicom-retry-failed", task_runner=ThreadPoolTaskRunner(max_workers=100),  # type: ignore[arg-type]
      flow_run_name=retry_run_name)
def retry_failed(params: RetryParameters) -> RetryResult:
    """Import again the files that failed for reasons that may pass, and read the
    output of jobs that earlier runs started but never read.

    Args:
        params: Which failures to retry (a run, a job, or the whole data store),
            and where and how to import them.
    """
    preflight(params.report_location, None, params.staging_prefix, params.output_prefix)
    assert params.datastore, "the parameter model requires a data store to import"
    datastore = resolve(params.datastore, create=False)
    datastore_id = datastore.datastore_id
    tag_current_run(*datastore_tags(params.datastore, datastore_id), "retry")
    ensure_job_slots(datastore_id)
    ledger = run_ledger(params.report_location, datastore_id)
    ledger.start_run("dicom-retry-failed", params.source)
    with ledger.holding_claims():
        result = _retry(params, datastore_id, ledger)
    return result.model_copy(update={"datastore_name": datastore.name})


def _retry(params: RetryParameters, datastore_id: str, ledger: RunLedger) -> RetryResult:
    logger = get_run_logger()
    records: list[ValidationRecord] = []
    batches: list[Batch] = []
    staged: list[StagedFile] = []
    outcomes: list[JobOutcome] = []

    unfinished = [
        job for job in ledger.unfinished_jobs(params.run_id, params.job_id)
        if all(under_source(f.uri, params.source) for f in job.files)
    ]
    jobs = _claim_jobs(ledger, unfinished)
    futures = [resume_job.submit(job, params.poll_interval_seconds,
                                 params.poll_timeout_seconds) for job in jobs]
    requeued: list[LedgerFile] = []
    failed_jobs: list[JobOutcome] = []
    for job, future in zip(jobs, futures, strict=True):
        outcome = future.result()
        if outcome.status is JobStatus.FAILED:
            # Its files are imported again below, and reported with their new job.
            failed_jobs.append(outcome)
            requeued += [replace(f, status=FileStatus.JOB_FAILED.value) for f in job.files]
            continue
        records += [f.as_validation_record() for f in job.files]
        batches.append(job.batch)
        staged += [StagedFile(f.uri, job.batch.batch_id, job.staged_key(f), StageAction.SKIPPED)
                   for f in job.files]
        outcomes.append(outcome)
    ledger.record_jobs_ended(failed_jobs)

    # Files of a job still unread (by this run, or by another retry that holds
    # them) are never imported again here: that could import them twice.
    in_jobs = {f.uri for job in unfinished for f in job.files}
    candidates = [
        f for f in ledger.failed_files(params.run_id, params.job_id)
        if f.uri not in in_jobs and under_source(f.uri, params.source)
    ] + requeued
    # Files whose job output was lost: those the data store holds are done.
    confirmed, candidates = look_up_lost_outputs(ledger, candidates)
    decided = plan(candidates, params.force, params.max_attempts)
    given_up = ledger.record_given_up(decided.give_up, params.max_attempts)
    retried = new_jobs = 0
    for source, items in decided.by_source.items():
        files = ledger.claim_known([(item.file, item.change) for item in items])
        won = {f.uri for f in files}
        items = [item for item in items if item.file.uri in won]
        retried += len(items)
        group = validate_sources(params, files)
        group_batches = batch(group, params.max_files_per_job, params.max_bytes_per_job)
        group_staged, group_outcomes = import_batches(
            params, datastore_id, retry_staging_id(source, datastore_id, items),
            group_batches, ledger,
        )
        records += group
        batches += group_batches
        staged += group_staged
        outcomes += group_outcomes
        new_jobs += sum(o.job_id is not None for o in group_outcomes)
    logger.info("%d jobs resumed, %d files found in the data store, %d files retried, "
                "%d given up, %d unchanged not retried", len(jobs), len(confirmed), retried,
                len(given_up), decided.not_retried)

    outputs = confirm_lost_outputs(datastore_id, batches, staged, outcomes,
                                   job_outputs(outcomes))
    folder = (f"{params.report_location.rstrip('/')}/retries/"
              f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{(flow_run.id or 'local')[:8]}")
    rows = retry_report(records, batches, staged, outcomes, outputs, params.include_phi)
    rows = with_recorded(ledger.record_outcomes(rows, outcomes), confirmed, given_up)
    job_table = build_job_summary(batches, outcomes, outputs, rows)
    ledger.record_report(folder, job_table)
    paths = write_report(rows, job_table, folder)
    counts = {**status_counts(rows), FileStatus.GIVEN_UP.value: len(given_up)}
    skipped = {"not_retried_unchanged": decided.not_retried}
    publish(job_rows(job_table), counts, skipped, paths.files_parquet, title="DICOM retry",
            keys=(RETRY_JOBS_ARTIFACT_KEY, RETRY_SUMMARY_ARTIFACT_KEY))
    ledger.finish_run({**counts, **skipped})
    return RetryResult(
        datastore_id=datastore_id,
        resumed_jobs=len(jobs),
        retried_files=retried,
        jobs=new_jobs,
        counts=counts,
        not_retried_unchanged=decided.not_retried,
        report_files_parquet=paths.files_parquet,
        report_jobs_parquet=paths.jobs_parquet,
    )


def _claim_jobs(ledger: RunLedger, jobs: list[LedgerJob]) -> list[LedgerJob]:
    """Only jobs whose every file this run won: two retries never both read one job."""
    claimed = []
    for job in jobs:
        files = [f.as_source_file() for f in job.files]
        won = ledger.claim_known([(f, Change.UNCHANGED) for f in files])
        if len(won) == len(files):
            claimed.append(job)
    return claimed
