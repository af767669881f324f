"""The way from a list of source files to import job outcomes, for both flows
that import: ingestion's windows and retry_failed's groups of files.

A window is validated, batched, staged, and its batches submitted as import
jobs; then its jobs are waited for. Ingestion submits a window while the one
before it is still being waited for (and inserts its own steps after
validation); a retry waits for each group before the next. Either way the
steps are the runner's, and so is what they share: the options, the data
store, the ledger, the stage timer and the run's import job slots.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from prefect.futures import PrefectFuture

from flows.cluster import stage_on_cluster, validate_on_cluster
from flows.parameters import ImportOptions
from flows.task_arguments import quote
from tasks.batch import Batch, batch
from tasks.discover import SourceFile
from tasks.import_jobs import import_batch
from tasks.interruption import stop_requested
from tasks.ledger import RunLedger
from tasks.poll import JobOutcome
from tasks.stage import StagedFile, batch_input_uri, stage, with_checksums
from tasks.statuses import JobStatus, StageAction
from tasks.validate import ValidationRecord, validate


class StageTimer:
    """Wall time per pipeline stage of one run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def summary(self) -> str:
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.seconds.items())


@dataclass
class Window:
    """One window between being batched and its jobs' outcomes."""

    records: list[ValidationRecord]
    batches: list[Batch]
    staged: list[StagedFile] = field(default_factory=list)
    jobs: list[tuple[Batch, PrefectFuture[JobOutcome] | None]] = field(default_factory=list)


class WindowRunner:
    """The steps of a window, with what the windows of one run share.

    ``datastore_id`` None is a dry run: windows are validated and batched,
    never staged or imported.
    """

    def __init__(
        self,
        params: ImportOptions,
        datastore_id: str | None,
        ledger: RunLedger,
        timer: StageTimer | None = None,
    ) -> None:
        self.params = params
        self.datastore_id = datastore_id
        self.ledger = ledger
        self.timer = timer or StageTimer()
        # The run's, shared by its windows: a window's jobs start as the
        # previous window's end.
        self.slots = threading.BoundedSemaphore(params.max_concurrent_jobs)

    def validate(self, files: list[SourceFile]) -> list[ValidationRecord]:
        """On the Dask cluster when one is configured, else on a local process pool."""
        params = self.params
        with self.timer.stage("validate"):
            if params.dask_address:
                return validate_on_cluster(params.dask_address, files, params.include_phi)
            return validate(quote(files), params.validation_workers, params.include_phi)

    def batch(self, records: list[ValidationRecord]) -> Window:
        batches = batch(quote(records), self.params.max_files_per_job,
                        self.params.max_bytes_per_job)
        return Window(records, batches)

    def start(self, window: Window, staging_id: str) -> Window:
        """Stage the window and submit its jobs, which run while the caller
        goes on; ``staging_id`` names the staging folder, from which the jobs'
        client tokens are derived."""
        if self.datastore_id is None:
            return window
        with self.timer.stage("stage"):
            staged = self._stage(staging_id, window.batches)
        self.ledger.renew()  # staging a large window can take a good part of a lease
        with self.timer.stage("import"):
            jobs = self._submit_jobs(self.datastore_id, staging_id,
                                     with_checksums(window.batches, staged), staged)
        return replace(window, staged=staged, jobs=jobs)

    def outcomes(self, window: Window) -> list[JobOutcome]:
        """Wait for the window's jobs."""
        with self.timer.stage("import"):
            return [_outcome(item, future, self.datastore_id or "")
                    for item, future in window.jobs]

    def _stage(self, staging_id: str, batches: list[Batch]) -> list[StagedFile]:
        params = self.params
        prefix = params.staging_prefix or ""
        if params.dask_address:
            return stage_on_cluster(params.dask_address, batches, prefix, staging_id,
                                    params.stage_concurrency)
        return stage(quote(batches), prefix, staging_id, params.stage_concurrency)

    def _submit_jobs(
        self, datastore_id: str, staging_id: str, batches: list[Batch], staged: list[StagedFile]
    ) -> list[tuple[Batch, PrefectFuture[JobOutcome] | None]]:
        """One task run per batch, at most ``max_concurrent_jobs`` of this run at a
        time: a slot is taken before submitting and given back when the task ends."""
        params = self.params
        unusable = {StageAction.FAILED, StageAction.INTERRUPTED}
        usable = {s.batch_id for s in staged if s.action not in unusable}
        futures: list[tuple[Batch, PrefectFuture[JobOutcome] | None]] = []
        for item in batches:
            if item.batch_id not in usable:
                futures.append((item, None))
                continue
            self.slots.acquire()
            if stop_requested():
                self.slots.release()
                futures.append((item, None))
                continue
            future = import_batch.submit(
                datastore_id,
                quote(item),
                f"{batch_input_uri(params.staging_prefix or '', staging_id, item.batch_id)}/",
                params.output_prefix or "",
                params.import_role_arn,
                params.poll_interval_seconds,
                params.poll_timeout_seconds,
                self.ledger,
            )
            future.add_done_callback(lambda _: self.slots.release())
            futures.append((item, future))
        return futures


def _outcome(
    item: Batch, future: PrefectFuture[JobOutcome] | None, datastore_id: str
) -> JobOutcome:
    if future is None and stop_requested():
        return JobOutcome(item.batch_id, datastore_id, None, JobStatus.INTERRUPTED,
                          "The run was stopped before this batch's job started.")
    if future is None:
        return JobOutcome(item.batch_id, datastore_id, None, JobStatus.NOT_STARTED,
                          "No file of this batch could be staged.")
    future.wait()
    state = future.state
    if state.is_completed():
        return future.result()
    # The task crashed after its retries: the job may exist, but nothing is
    # known about its files, so they are reported as not imported.
    error = future.result(raise_on_failure=False)
    return JobOutcome(item.batch_id, datastore_id, None, JobStatus.FAILED,
                      f"Import task ended {state.name}: {error}")
