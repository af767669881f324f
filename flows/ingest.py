"""The ``dicom-ingest`` flow: from a folder or S3 prefix to image sets, with a
report that accounts for every file.

Orchestration only; each stage lives in ``tasks``. The source is listed into
the ledger (its inventory) and worked through in windows of ``window_files``
files: memory follows the window, not the source, and a migration's runs
share one inventory (tasks.ledger.inventory). A window is validated,
batched, staged, submitted and waited for by the window runner that
retry_failed uses too (flows.window_runner). Lists of files, records and
batches go to tasks wrapped in ``quote``: Prefect would otherwise walk every
element of every argument looking for futures. Reruns are safe: windows are
claimed in URI order, and batches, the staging prefix and job client tokens
are derived from the inputs, so a rerun after a kill gets the jobs it
already started back from HealthImaging instead of starting them twice, and
marks the killed run Crashed in Prefect once it takes its files over.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from flows.cluster import source_reader
from flows.parameters import IngestParameters
from flows.run_identity import (
    datastore_tags,
    ingest_run_name,
    run_ledger,
    scratch_ledger,
    tag_current_run,
)
from flows.task_arguments import quote
from flows.window_runner import StageTimer, Window, WindowRunner
from tasks.conflicts import (
    NonPrimarySet,
    SeriesConflict,
    explain_conflicts,
    landed_non_primary,
    non_primary_sets,
    publish_conflicts,
)
from tasks.crashed_runs import crash_dead_runs
from tasks.discover import SourceFile
from tasks.image_sets_artifact import LandedImageSets, publish_image_sets
from tasks.import_jobs import Datastore, resolve
from tasks.interruption import stop_requested
from tasks.job_slots import ensure_job_slots
from tasks.landed import confirm_lost_outputs
from tasks.ledger import (
    Inventory,
    RunLedger,
    claim_window,
    list_source,
    settle_unchanged,
    skip_imported_elsewhere,
)
from tasks.manifest import JobOutput, job_outputs
from tasks.poll import JobOutcome
from tasks.preflight import preflight
from tasks.report import (
    JOB_COLUMNS,
    ReportWriter,
    build_job_summary,
    build_report,
    job_rows,
    not_taken_rows,
)
from tasks.stage import staging_run_id
from tasks.statuses import Landing, Skip
from tasks.validate import with_earlier_instances
from tasks.verify.results import FileVerification, verification_counts, with_verification
from tasks.verify.run import files_to_verify, verify

JOBS_ARTIFACT_KEY = "dicom-ingest-jobs"
SUMMARY_ARTIFACT_KEY = "dicom-ingest-summary"


class IngestResult(BaseModel):
    run_id: str
    datastore_id: str | None
    datastore_name: str | None = None
    files: int
    # Import jobs, and STOW-RS requests (--landing stow|auto), of this run.
    jobs: int
    stow_requests: int = 0
    counts: dict[str, int]
    report_files_parquet: str
    # Only for runs small enough to open in a spreadsheet (see README.md).
    report_files_csv: str | None
    report_jobs_parquet: str
    report_jobs_csv: str
    report_summary: str | None = None
    # The ID retry_failed selects a run by (the staging run_id is per source).
    flow_run_id: str | None = None
    # Discovered but left out of this run's report (see "The ledger" in README.md).
    skipped_unchanged: int = 0
    # Unchanged files whose job failed max_attempts times: left to retry --force.
    given_up: int = 0
    claimed_by_other_runs: int = 0
    # One line per live run holding some of this source's files.
    holders: list[str] = []
    # Jobs of this run that an earlier run had started (got back, not started again).
    jobs_from_earlier_runs: list[str] = []
    # Jobs that imported the files this run skipped as unchanged, with counts.
    jobs_of_skipped: dict[str, int] = {}
    # Files reported already_imported (their instance, with their bytes, came
    # from another file), by that file's source.
    already_imported_from: dict[str, int] = {}
    # Wall seconds per stage (discover, validate, stage, import, report): where
    # a slow run spent its time; the rest went to the ledger and orchestration.
    timings: dict[str, float] = {}
    # Imported files by verification result (tasks.verify); empty in a dry run.
    verification: dict[str, int] = {}
    # Image sets files landed in beside their series' primary one, and why
    # they could not be told apart, if they could not (tasks.conflicts).
    non_primary: list[NonPrimarySet] = []
    conflicts_unexplained: str | None = None


# The pool only bounds threads; the number of jobs in flight is bounded per
# run by max_concurrent_jobs (at most 100, HealthImaging's own quota). Prefect's
# types reject its own ThreadPoolTaskRunner here (PrefectHQ/prefect#16938).
@flow(name="dicom-ingest", task_runner=ThreadPoolTaskRunner(max_workers=100),  # type: ignore[arg-type]
      flow_run_name=ingest_run_name)
def dicom_ingest(params: IngestParameters) -> IngestResult:
    """Validate DICOM files, import the valid ones into HealthImaging, report on all.

    Args:
        params: What to import, where to, and within which limits.
    """
    timer = StageTimer()
    preflight(params.report_location, params.source, params.staging_prefix,
              params.output_prefix, imports=params.imports(), dask_address=params.dask_address)
    if params.dry_run:
        # A dry run changes no state: its ledger is a scratch one, gone with it.
        with scratch_ledger(params.datastore or "dry-run") as ledger:
            return _ingest(params, None, ledger, timer)
    assert params.datastore, "the parameter model requires a data store to import"
    datastore = resolve(params.datastore, create=params.create_datastore, creatable=True)
    tag_current_run(*datastore_tags(params.datastore, datastore.datastore_id))
    ensure_job_slots(datastore.datastore_id)
    ledger = run_ledger(params.report_location, datastore.datastore_id, begin=True)
    return _ingest(params, datastore, ledger, timer)


def _ingest(
    params: IngestParameters, datastore: Datastore | None, ledger: RunLedger, timer: StageTimer
) -> IngestResult:
    """List the source into the ledger (unless a migration did), then work
    through it a window at a time."""
    ledger.start_run("dicom-ingest", params.source)
    inventory = Inventory(ledger, params.inventory or ledger.run_id)
    with ledger.holding_claims():
        try:
            if params.inventory is None:
                with timer.stage("discover"):
                    listing = list_source(inventory, params.source, not params.reimport,
                                          params.max_attempts)
                get_run_logger().info(
                    "%d files found: %d to process, %d unchanged since an earlier run, "
                    "%d given up after %d attempts", listing.files, listing.to_process,
                    listing.skipped_unchanged, listing.given_up, params.max_attempts)
            return _work_through(params, datastore, ledger, inventory, timer)
        finally:
            if params.inventory is None:
                inventory.forget()


@dataclass
class _RunTally:
    """What the windows of a run add up to (jobs and counts, never files)."""

    same_bytes: int = 0
    already_imported_from: Counter[str] = field(default_factory=Counter)
    job_tables: list[pd.DataFrame] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    stow_requests: list[str] = field(default_factory=list)
    jobs_from_earlier_runs: list[str] = field(default_factory=list)
    # Series with files in non-primary image sets (few), for one artifact.
    conflicts: list[SeriesConflict] = field(default_factory=list)
    # Files in non-primary image sets, by image set.
    non_primary: Counter[str] = field(default_factory=Counter)
    unexplained: str | None = None
    # Files by what verification found, over every window.
    verified: dict[str, int] = field(default_factory=dict)
    image_sets: LandedImageSets = field(default_factory=LandedImageSets)

    def add_jobs(self, outcomes: list[JobOutcome]) -> None:
        self.job_ids += [o.job_id for o in outcomes if o.job_id and o.landing is Landing.JOB]
        self.stow_requests += [o.job_id for o in outcomes
                               if o.job_id and o.landing is Landing.STOW]
        self.jobs_from_earlier_runs += [o.job_id for o in outcomes
                                        if o.job_id and o.from_earlier_run]


@dataclass
class _Windows:
    """The windows of one run and what they share, so that each step takes
    only its window."""

    params: IngestParameters
    runner: WindowRunner
    inventory: Inventory
    # Per source and data store: a rerun stages to the same folder, and so
    # gets back the jobs it already started.
    staging_id: str
    writer: ReportWriter
    tally: _RunTally = field(default_factory=_RunTally)

    def submit(self, files: list[SourceFile], number: int) -> Window:
        """Validate, batch, stage and submit a window; its jobs run while the
        window before it is reported. Unless reimporting, files whose bytes
        the ledger or the data store already holds are left out first."""
        runner = self.runner
        records = runner.validate(files)
        records = with_earlier_instances(records, self.inventory.keep_instances(
            {r.sop_instance_uid: r.uri for r in records if r.is_valid and r.sop_instance_uid}))
        skip = not self.params.reimport
        records, same_bytes = settle_unchanged(runner.ledger, quote(records), skip)
        records, elsewhere = skip_imported_elsewhere(runner.ledger, quote(records), skip)
        self.tally.same_bytes += same_bytes
        self.tally.already_imported_from.update(elsewhere)
        window = runner.batch(records)
        get_run_logger().info("Window %d: %d files, %d valid, in %d batches", number, len(records),
                              sum(r.is_valid for r in records), len(window.batches))
        return runner.start(window, self.staging_id)

    def report(self, window: Window) -> None:
        """Wait for the window's jobs, then record and write its rows: from here
        on the window's files are done, and released."""
        runner, tally, timer = self.runner, self.tally, self.runner.timer
        datastore_id = runner.datastore_id
        outcomes = runner.outcomes(window)
        with timer.stage("report"):
            outputs = confirm_lost_outputs(datastore_id, quote(window.batches),
                                           quote(window.staged), outcomes,
                                           quote(job_outputs(outcomes)))
        verification = self._verify(window, outcomes, outputs)
        with timer.stage("report"):
            files = build_report(quote(window.records), quote(window.batches),
                                 quote(window.staged), outcomes, quote(outputs),
                                 self.params.include_phi)
            if verification is not None:
                files = with_verification(files, verification)
                for result, count in verification_counts(verification).items():
                    tally.verified[result] = tally.verified.get(result, 0) + count
            if datastore_id is not None:
                explained = explain_conflicts(quote(files), datastore_id)
                files = explained.files
                tally.conflicts += explained.conflicts
                tally.non_primary.update(landed_non_primary(files))
                tally.unexplained = tally.unexplained or explained.unexplained
            files = runner.ledger.record_outcomes(files, outcomes)
            self.writer.add_files(files)
            tally.image_sets.add(files)
            tally.job_tables.append(build_job_summary(window.batches, outcomes, outputs, files))
        tally.add_jobs(outcomes)

    def _verify(
        self, window: Window, outcomes: list[JobOutcome], outputs: dict[str, JobOutput | str]
    ) -> list[FileVerification] | None:
        """None in a dry run: nothing was imported to read back."""
        datastore_id, params = self.runner.datastore_id, self.params
        if datastore_id is None:
            return None
        with self.runner.timer.stage("verify"):
            return verify(
                datastore_id,
                quote(files_to_verify(window.records, window.staged, outputs, outcomes)),
                params.verify, source_reader(params.dask_address, params.validation_workers))


def _work_through(
    params: IngestParameters, datastore: Datastore | None, ledger: RunLedger,
    inventory: Inventory, timer: StageTimer,
) -> IngestResult:
    """Claim a window, validate, batch, stage and submit it, then report the
    window before it while this one's jobs run: import job slots stay busy
    across windows, and at most two windows are held at once."""
    datastore_id = datastore.datastore_id if datastore else None
    run_id = staging_run_id(params.source, datastore_id or params.datastore or "")
    # The flow run ID too: two runs of one source can start within a second.
    folder = f"{params.report_location.rstrip('/')}/{run_id}/" \
             f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{(flow_run.id or 'local')[:8]}"
    ledger.record_report(folder, pd.DataFrame(columns=JOB_COLUMNS))
    windows = _Windows(params, WindowRunner(params, datastore_id, ledger, timer), inventory,
                       run_id, ReportWriter(folder))
    submitted: Window | None = None
    number = 0
    while not stop_requested():
        claimed = claim_window(inventory, params.window_files)
        if claimed.taken_from:
            crash_dead_runs(ledger, claimed.taken_from)
        if not claimed.files:
            break
        number += 1
        started = windows.submit(claimed.files, number)
        if submitted is not None:
            windows.report(submitted)
        submitted = started
    if submitted is not None:
        windows.report(submitted)
    if stop_requested() and params.inventory is None:
        for files in inventory.untaken(params.window_files):
            windows.writer.add_files(ledger.record_outcomes(not_taken_rows(files)))
    return _finish(windows, datastore, folder)


def _finish(windows: _Windows, datastore: Datastore | None, folder: str) -> IngestResult:
    """Write the run's report and artifacts, counting the files this run left
    alone, and end the run in the ledger."""
    params, writer, tally = windows.params, windows.writer, windows.tally
    ledger, timer = windows.runner.ledger, windows.runner.timer
    leftover = windows.inventory.leftover()
    own_listing = params.inventory is None
    skipped = {
        "skipped_unchanged": tally.same_bytes + (leftover.skipped_unchanged if own_listing else 0),
        Skip.GIVEN_UP.value: leftover.given_up if own_listing else 0,
        "claimed_by_other_runs": leftover.claimed_by_other_runs,
    }
    for holder in leftover.holders:
        get_run_logger().warning(holder.describe())
    jobs = (pd.concat(tally.job_tables, ignore_index=True) if tally.job_tables
            else pd.DataFrame(columns=JOB_COLUMNS))
    ledger.record_report(folder, jobs)
    with timer.stage("report"):
        paths = writer.close(jobs, {"counts": writer.counts, **skipped,
                                    "jobs": len(tally.job_ids),
                                    "stow_requests": len(tally.stow_requests)})
        publish(job_rows(jobs), writer.counts, skipped, paths.files_parquet,
                verification=tally.verified)
        if datastore is not None:
            publish_conflicts(tally.conflicts, tally.unexplained)
            publish_image_sets(tally.image_sets)
    get_run_logger().info("Time by stage: %s", timer.summary())
    ledger.finish_run({**writer.counts, **skipped})
    return IngestResult(
        run_id=windows.staging_id,
        datastore_id=windows.runner.datastore_id,
        datastore_name=datastore.name if datastore else None,
        files=writer.rows,
        jobs=len(tally.job_ids),
        stow_requests=len(tally.stow_requests),
        counts=writer.counts,
        report_files_parquet=paths.files_parquet,
        report_files_csv=paths.files_csv,
        report_jobs_parquet=paths.jobs_parquet,
        report_jobs_csv=paths.jobs_csv,
        report_summary=paths.summary,
        flow_run_id=flow_run.id,
        timings=timer.seconds,
        holders=[holder.describe() for holder in leftover.holders],
        jobs_from_earlier_runs=tally.jobs_from_earlier_runs,
        jobs_of_skipped=leftover.jobs_of_skipped if own_listing else {},
        already_imported_from=dict(tally.already_imported_from),
        verification=tally.verified,
        non_primary=non_primary_sets(tally.non_primary, tally.conflicts),
        conflicts_unexplained=tally.unexplained,
        **skipped,
    )


def publish(
    job_rows: list[dict[str, object]],
    counts: dict[str, int],
    skipped: dict[str, int],
    report: str,
    title: str = "DICOM ingest",
    keys: tuple[str, str] = (JOBS_ARTIFACT_KEY, SUMMARY_ARTIFACT_KEY),
    verification: dict[str, int] | None = None,
) -> None:
    """Counts and job IDs only: artifacts are visible to every UI user, so no PHI.
    Stable keys give each artifact a version history in the UI."""
    jobs_key, summary_key = keys
    create_table_artifact(
        key=jobs_key,
        table=job_rows,
        description="Import jobs of this run, one row per batch.",
    )
    lines = ["| status | files |", "|---|---:|"]
    lines += [f"| {status} | {count} |" for status, count in counts.items()]
    lines += [f"| {name} (not in the report) | {count} |" for name, count in skipped.items()]
    lines += [f"| verification: {result} | {count} |"
              for result, count in (verification or {}).items()]
    create_markdown_artifact(
        key=summary_key,
        markdown=f"## {title}\n\n" + "\n".join(lines) + f"\n\nPer-file report: `{report}`\n",
        description="Files by final status.",
    )
