"""The ``dicom-retry-failed`` flow: finish what earlier runs left failed or
unfinished, from the ledger's record of them.

First the jobs that some run started but never read (it died, or stopped
waiting): they are waited for and their output read, so nothing is imported
twice. Then the failed files, chosen by the kind of failure (tasks.retry),
go through the window runner an ingestion's windows go through
(flows.window_runner), a window per source; a batch whose job FAILED for its
content is split until its poison file is alone (tasks.split). Files a
verification failed are looked up first, and imported again only where that
replaces their instance (tasks.retry_mismatch). What the retry imported is
verified, as an ingestion's is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import pandas as pd
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from flows.cluster import source_reader
from flows.ingest import publish
from flows.parameters import RetryParameters
from flows.run_identity import datastore_tags, retry_run_name, run_ledger, tag_current_run
from flows.task_arguments import quote
from flows.window_runner import Window, WindowRunner
from tasks.batch import Batch, halves
from tasks.crashed_runs import crash_dead_runs
from tasks.import_jobs import resolve
from tasks.job_slots import ensure_job_slots
from tasks.landed import confirm_lost_outputs
from tasks.ledger import LedgerFile, LedgerJob, RunLedger
from tasks.manifest import job_outputs
from tasks.poll import JobOutcome
from tasks.preflight import preflight
from tasks.report import (
    ReportPaths,
    build_job_summary,
    job_rows,
    status_counts,
    write_report,
)
from tasks.retry import (
    RetryPlan,
    look_up_lost_outputs,
    plan,
    resume_job,
    retry_report,
    retry_staging_id,
    under_source,
    with_recorded,
)
from tasks.retry_mismatch import judge_reimported, look_up_mismatched, needs_decision
from tasks.split import (
    failed_alone,
    failed_for_content,
    isolated,
    look_up_stored,
    mark_isolated,
    split_staging_id,
    split_when_resumed,
)
from tasks.stage import StagedFile
from tasks.statuses import Change, FileStatus, JobStatus, StageAction
from tasks.validate import ValidationRecord
from tasks.verify.results import FileVerification, verification_counts, with_verification
from tasks.verify.run import files_to_verify, verify

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
    # Only for retries small enough to open in a spreadsheet (see README.md).
    report_files_csv: str | None = None
    report_jobs_csv: str | None = None
    # Files by what verification found (those the retry imported or found
    # in the data store), and files left failing for an operator's decision.
    verification: dict[str, int] = {}
    needs_decision: int = 0


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
    preflight(params.report_location, None, params.staging_prefix, params.output_prefix,
              dask_address=params.dask_address)
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


@dataclass
class _JobFiles:
    """Files with the job that imported them, as the retry's report takes them."""

    records: list[ValidationRecord] = field(default_factory=list)
    batches: list[Batch] = field(default_factory=list)
    staged: list[StagedFile] = field(default_factory=list)
    outcomes: list[JobOutcome] = field(default_factory=list)
    # Files of FAILED jobs that the data store holds: recorded already.
    confirmed: list[pd.DataFrame] = field(default_factory=list)
    # Jobs a killed retry started that FAILED for their content: to split.
    to_split: list[tuple[Batch, JobOutcome]] = field(default_factory=list)

    def add(self, window: Window, outcomes: list[JobOutcome]) -> None:
        self.records += window.records
        self.batches += window.batches
        self.staged += window.staged
        self.outcomes += outcomes

    def drop(self, batch: Batch) -> None:
        """A batch split since: its files are reported with its parts."""
        uris = {f.uri for f in batch.files}
        self.records = [r for r in self.records if r.uri not in uris]
        self.batches = [b for b in self.batches if b.batch_id != batch.batch_id]
        self.staged = [s for s in self.staged if s.batch_id != batch.batch_id]
        self.outcomes = [o for o in self.outcomes if o.batch_id != batch.batch_id]


@dataclass(frozen=True)
class _Settled:
    """Files the retry settled without a job of its own; recorded already."""

    found_in_datastore: pd.DataFrame
    given_up: pd.DataFrame
    # Refused for their content, unchanged since, and not forced.
    not_retried: int
    # Verification failed them and the data store holds them: not imported
    # again (tasks.retry_mismatch), with what verifying them found.
    held: pd.DataFrame
    held_verified: list[FileVerification]
    # Verification failed them and they are imported again: judged after.
    mismatched: frozenset[str]


def _retry(params: RetryParameters, datastore_id: str, ledger: RunLedger) -> RetryResult:
    unfinished = [
        job for job in ledger.unfinished_jobs(params.run_id, params.job_id)
        if all(under_source(f.uri, params.source) for f in job.files)
    ]
    jobs = _claim_jobs(ledger, unfinished)
    done, requeued = _resume(params, ledger, jobs)
    # Files of a job still unread (by this run, or by another retry that holds
    # them) are never imported again here: that could import them twice.
    in_jobs = {f.uri for job in unfinished for f in job.files}
    candidates = [
        f for f in ledger.failed_files(params.run_id, params.job_id)
        if f.uri not in in_jobs and under_source(f.uri, params.source)
    ] + requeued
    # Files whose job output was lost: those the data store holds are done.
    confirmed, candidates = look_up_lost_outputs(ledger, candidates)
    held, held_verified, candidates = look_up_mismatched(
        ledger, candidates, params.verify,
        source_reader(params.dask_address, params.validation_workers))
    decided = plan(candidates, params.force, params.max_attempts)
    settled = _Settled(confirmed, ledger.record_given_up(decided.give_up, params.max_attempts),
                       decided.not_retried, held, held_verified, frozenset(
                           c.uri for c in candidates if c.status == FileStatus.VERIFY_MISMATCH))
    retried, new_jobs = _import_again(params, datastore_id, ledger, decided, done)
    get_run_logger().info(
        "%d jobs resumed, %d files found in the data store, %d files retried, "
        "%d given up, %d unchanged not retried", len(jobs), len(confirmed) + len(held), retried,
        len(settled.given_up), decided.not_retried)
    report = _report(params, datastore_id, ledger, done, settled)
    return RetryResult(
        datastore_id=datastore_id,
        resumed_jobs=len(jobs),
        retried_files=retried,
        jobs=new_jobs,
        counts=report.counts,
        not_retried_unchanged=decided.not_retried,
        report_files_parquet=report.paths.files_parquet,
        report_jobs_parquet=report.paths.jobs_parquet,
        report_files_csv=report.paths.files_csv,
        report_jobs_csv=report.paths.jobs_csv,
        verification=report.verification,
        needs_decision=report.needs_decision,
    )


def _resume(
    params: RetryParameters, ledger: RunLedger, jobs: list[LedgerJob]
) -> tuple[_JobFiles, list[LedgerFile]]:
    """Wait for each job and read it: its files are reported with it, unless it
    FAILED; then they are imported again (the list returned), and reported
    with their new job, or, when a retry started it, it is split."""
    futures = [resume_job.submit(job, params.poll_interval_seconds,
                                 params.poll_timeout_seconds) for job in jobs]
    done = _JobFiles()
    requeued: list[LedgerFile] = []
    failed_jobs: list[JobOutcome] = []
    for job, future in zip(jobs, futures, strict=True):
        outcome = future.result()
        staged = [StagedFile(f.uri, job.batch.batch_id, job.staged_key(f), StageAction.SKIPPED)
                  for f in job.files]
        window = Window([f.as_validation_record() for f in job.files], [job.batch], staged)
        if split_when_resumed(job.input_s3_uri, outcome):
            done.add(window, [outcome])
            done.to_split.append((job.batch, outcome))
            continue
        if outcome.status is JobStatus.FAILED:
            failed_jobs.append(outcome)
            requeued += [replace(f, status=FileStatus.JOB_FAILED.value) for f in job.files]
            continue
        done.add(window, [outcome])
    ledger.record_jobs_ended(failed_jobs)
    return done, requeued


def _import_again(
    params: RetryParameters, datastore_id: str, ledger: RunLedger, decided: RetryPlan,
    done: _JobFiles,
) -> tuple[int, int]:
    """A window per source, each waited for before the next: the files this
    run wins a claim on, staged under a folder of their own (retry_staging_id).
    Returns how many files were retried, and with how many new jobs."""
    runner = WindowRunner(params, datastore_id, ledger)
    retried = 0
    new_jobs = _split_failed(runner, ledger, done, done.to_split)
    for source, items in decided.by_source.items():
        claimed = ledger.claim_known([(item.file, item.change) for item in items])
        crash_dead_runs(ledger, claimed.taken_from)
        files = claimed.files
        won = {f.uri for f in files}
        items = [item for item in items if item.file.uri in won]
        retried += len(items)
        window = runner.start(runner.batch(runner.validate(files)),
                              retry_staging_id(source, datastore_id, items))
        outcomes = runner.outcomes(window)
        done.add(window, outcomes)
        new_jobs += sum(o.job_id is not None for o in outcomes)
        new_jobs += _split_failed(runner, ledger, done,
                                  failed_for_content(window.batches, outcomes))
    return retried, new_jobs


def _split_failed(
    runner: WindowRunner, ledger: RunLedger, done: _JobFiles,
    failed: list[tuple[Batch, JobOutcome]],
) -> int:
    """Round after round, the halves of every batch whose job FAILED for its
    content run at once, until each part is imported or one file that failed
    alone (tasks.split); files the data store holds are not imported again.
    Returns how many jobs the rounds started."""
    new_jobs = 0
    while failed:
        parts = []
        for batch, outcome in failed:
            other_bytes = ledger.imported_as_other_bytes({f.uri: f.sha256 for f in batch.files})
            rows, rest = look_up_stored(outcome.datastore_id, batch, outcome, other_bytes)
            if failed_alone(batch, rest):
                continue
            ledger.record_jobs_ended([outcome])
            done.drop(batch)
            if not rows.empty:
                done.confirmed.append(ledger.record_outcomes(rows))
            if rest is not None:
                parts.append(runner.start(Window(list(rest.files), halves(rest)),
                                          split_staging_id(outcome.datastore_id,
                                                           outcome.job_id or "")))
        failed = []
        for part in parts:
            outcomes = runner.outcomes(part)
            done.add(part, outcomes)
            new_jobs += sum(o.job_id is not None for o in outcomes)
            failed += failed_for_content(part.batches, outcomes)
    return new_jobs


@dataclass(frozen=True)
class _Reported:
    counts: dict[str, int]
    paths: ReportPaths
    verification: dict[str, int]
    needs_decision: int


def _report(
    params: RetryParameters, datastore_id: str, ledger: RunLedger, done: _JobFiles,
    settled: _Settled,
) -> _Reported:
    """Verify what the retry imported, record the outcomes, write the report
    and the artifacts, and end the run."""
    outputs = confirm_lost_outputs(datastore_id, done.batches, done.staged, done.outcomes,
                                   job_outputs(done.outcomes))
    folder = (f"{params.report_location.rstrip('/')}/retries/"
              f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{(flow_run.id or 'local')[:8]}")
    rows = mark_isolated(retry_report(done.records, done.batches, done.staged, done.outcomes,
                                      outputs, params.include_phi),
                         isolated(done.batches, done.outcomes))
    verified = verify(datastore_id, quote(files_to_verify(done.records, done.staged, outputs,
                                                          done.outcomes)),
                      params.verify, source_reader(params.dask_address, params.validation_workers))
    rows = judge_reimported(with_verification(rows, verified), settled.mismatched)
    rows = with_recorded(ledger.record_outcomes(rows, done.outcomes),
                         settled.found_in_datastore, settled.held, settled.given_up,
                         *done.confirmed)
    job_table = build_job_summary(done.batches, done.outcomes, outputs, rows)
    ledger.record_report(folder, job_table)
    paths = write_report(rows, job_table, folder)
    counts = {**status_counts(rows), FileStatus.GIVEN_UP.value: len(settled.given_up)}
    skipped = {"not_retried_unchanged": settled.not_retried}
    verification = verification_counts([*settled.held_verified, *verified])
    publish(job_rows(job_table), counts, skipped, paths.files_parquet, title="DICOM retry",
            keys=(RETRY_JOBS_ARTIFACT_KEY, RETRY_SUMMARY_ARTIFACT_KEY),
            verification=verification)
    ledger.finish_run({**counts, **skipped})
    return _Reported(counts, paths, verification, needs_decision(rows))


def _claim_jobs(ledger: RunLedger, jobs: list[LedgerJob]) -> list[LedgerJob]:
    """Only jobs whose every file this run won: two retries never both read one job."""
    claimed: list[LedgerJob] = []
    taken_from: set[str] = set()
    for job in jobs:
        files = [f.as_source_file() for f in job.files]
        won = ledger.claim_known([(f, Change.UNCHANGED) for f in files])
        taken_from.update(won.taken_from)
        if len(won.files) == len(files):
            claimed.append(job)
    # Marked Crashed only if the ledger presumes them dead (not a lease over).
    crash_dead_runs(ledger, sorted(taken_from))
    return claimed
