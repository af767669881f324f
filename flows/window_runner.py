"""The way from a list of source files to import job outcomes, for both flows
that import: ingestion's windows and retry_failed's groups of files.

A window is validated, batched, staged, and its batches submitted as import
jobs; then its jobs are waited for. Ingestion submits a window while the one
before it is still being waited for (and inserts its own steps after
validation); a retry waits for each group before the next. Either way the
steps are the runner's, and so is what they share: the options, the data
store, the ledger, the stage timer and the run's import job slots. How a
window's batches land (import jobs or STOW-RS requests) is chosen per
window (tasks.landing), each way behind one interface (``LandingWay``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Protocol

from prefect.futures import PrefectFuture

from config.settings import get_settings
from flows.cluster import stage_on_cluster, validate_on_cluster
from flows.parameters import ImportOptions
from flows.task_arguments import quote
from tasks.batch import Batch, batch
from tasks.discover import SourceFile
from tasks.import_jobs import import_batch
from tasks.interruption import stop_requested
from tasks.landing import MB, choose_landing, stow_requests
from tasks.ledger import RunLedger
from tasks.poll import JobOutcome
from tasks.stage import StagedFile, batch_input_uri, stage, with_checksums
from tasks.statuses import JobStatus, Landing, StageAction
from tasks.stow import stow_batch
from tasks.stow_client import StowClient
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
    landing: Landing = Landing.JOB


class LandingWay(Protocol):
    """The import step, one implementation per way a batch lands: what is
    done to a window's batches before any is sent, and a task run per batch,
    at most ``slots`` of this run's at a time."""

    slots: threading.BoundedSemaphore

    def prepare(self, staging_id: str, batches: list[Batch]) -> list[StagedFile]: ...

    def ready(self, item: Batch, staged: list[StagedFile]) -> bool: ...

    def submit(self, staging_id: str, item: Batch) -> PrefectFuture[JobOutcome]: ...


class _ByImportJob:
    """Staged to S3, then an import job per batch (tasks.import_jobs)."""

    def __init__(self, params: ImportOptions, datastore_id: str, ledger: RunLedger) -> None:
        self.params, self.datastore_id, self.ledger = params, datastore_id, ledger
        # The run's, shared by its windows: a window's jobs start as the
        # previous window's end.
        self.slots = threading.BoundedSemaphore(params.max_concurrent_jobs)

    def prepare(self, staging_id: str, batches: list[Batch]) -> list[StagedFile]:
        params = self.params
        prefix = params.staging_prefix or ""
        if params.dask_address:
            return stage_on_cluster(params.dask_address, batches, prefix, staging_id,
                                    params.stage_concurrency)
        return stage(quote(batches), prefix, staging_id, params.stage_concurrency)

    def ready(self, item: Batch, staged: list[StagedFile]) -> bool:
        unusable = {StageAction.FAILED, StageAction.INTERRUPTED}
        return any(s.batch_id == item.batch_id and s.action not in unusable for s in staged)

    def submit(self, staging_id: str, item: Batch) -> PrefectFuture[JobOutcome]:
        params = self.params
        return import_batch.submit(
            self.datastore_id,
            quote(item),
            f"{batch_input_uri(params.staging_prefix or '', staging_id, item.batch_id)}/",
            params.output_prefix or "",
            params.import_role_arn,
            params.poll_interval_seconds,
            params.poll_timeout_seconds,
            self.ledger,
        )


class _ByStow:
    """A STOW-RS request per batch (tasks.stow), its files read from the
    source as it is sent: nothing is staged."""

    def __init__(self, datastore_id: str, ledger: RunLedger) -> None:
        in_flight = get_settings().stow_concurrency
        self.datastore_id, self.ledger = datastore_id, ledger
        self.slots = threading.BoundedSemaphore(in_flight)
        self.client = StowClient.for_environment(in_flight)

    def prepare(self, staging_id: str, batches: list[Batch]) -> list[StagedFile]:
        return []

    def ready(self, item: Batch, staged: list[StagedFile]) -> bool:
        return True

    def submit(self, staging_id: str, item: Batch) -> PrefectFuture[JobOutcome]:
        return stow_batch.submit(self.client, self.datastore_id, quote(item), self.ledger)


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
        self._ways: dict[Landing, LandingWay] = {}

    def validate(self, files: list[SourceFile]) -> list[ValidationRecord]:
        """On the Dask cluster when one is configured, else on a local process pool."""
        params = self.params
        with self.timer.stage("validate"):
            if params.dask_address:
                return validate_on_cluster(params.dask_address, files, params.include_phi)
            return validate(quote(files), params.validation_workers, params.include_phi)

    def batch(self, records: list[ValidationRecord]) -> Window:
        """The window's batches, made for the way it lands (tasks.landing)."""
        params, settings = self.params, get_settings()
        landing = choose_landing(params.landing, records, settings.stow_auto_max_files,
                                 settings.stow_auto_max_mb * MB)
        if landing is Landing.STOW:
            batches = stow_requests(records, params.max_files_per_job,
                                    settings.stow_request_mb * MB)
        else:
            batches = batch(quote(records), params.max_files_per_job, params.max_bytes_per_job)
        return Window(records, batches, landing=landing)

    def start(self, window: Window, staging_id: str) -> Window:
        """Stage the window (for import jobs) and submit its batches, which
        land while the caller goes on; ``staging_id`` names the staging
        folder, from which the jobs' client tokens are derived."""
        if self.datastore_id is None:
            return window
        way = self._way(window.landing, self.datastore_id)
        with self.timer.stage("stage"):
            staged = way.prepare(staging_id, window.batches)
        self.ledger.renew()  # staging a large window can take a good part of a lease
        with self.timer.stage("import"):
            jobs = self._submit(way, staging_id, with_checksums(window.batches, staged), staged)
        return replace(window, staged=staged, jobs=jobs)

    def outcomes(self, window: Window) -> list[JobOutcome]:
        """Wait for the window's jobs or requests. A request's files were
        read into its body, not staged: what reading them found joins the
        window's staging results, as the report takes them."""
        with self.timer.stage("import"):
            outcomes = [_outcome(item, future, self.datastore_id or "", window.landing)
                        for item, future in window.jobs]
        window.staged.extend(read for outcome in outcomes if outcome.answer is not None
                             for read in outcome.answer.sent)
        return outcomes

    def _way(self, landing: Landing, datastore_id: str) -> LandingWay:
        """Made at its first window: a run by jobs alone opens no DICOMweb session."""
        if landing not in self._ways:
            self._ways[landing] = (_ByStow(datastore_id, self.ledger) if landing is Landing.STOW
                                   else _ByImportJob(self.params, datastore_id, self.ledger))
        return self._ways[landing]

    def _submit(
        self, way: LandingWay, staging_id: str, batches: list[Batch], staged: list[StagedFile]
    ) -> list[tuple[Batch, PrefectFuture[JobOutcome] | None]]:
        """One task run per batch, at most the way's slots of this run at a
        time: a slot is taken before submitting and given back when the task ends."""
        futures: list[tuple[Batch, PrefectFuture[JobOutcome] | None]] = []
        for item in batches:
            if not way.ready(item, staged):
                futures.append((item, None))
                continue
            way.slots.acquire()
            if stop_requested():
                way.slots.release()
                futures.append((item, None))
                continue
            future = way.submit(staging_id, item)
            future.add_done_callback(lambda _: way.slots.release())
            futures.append((item, future))
        return futures


def _outcome(
    item: Batch, future: PrefectFuture[JobOutcome] | None, datastore_id: str, landing: Landing
) -> JobOutcome:
    if future is None and stop_requested():
        return JobOutcome(item.batch_id, datastore_id, None, JobStatus.INTERRUPTED,
                          "The run was stopped before this batch's job started.",
                          landing=landing)
    if future is None:
        return JobOutcome(item.batch_id, datastore_id, None, JobStatus.NOT_STARTED,
                          "No file of this batch could be staged.", landing=landing)
    future.wait()
    state = future.state
    if state.is_completed():
        return future.result()
    # The task crashed after its retries: the job may exist, but nothing is
    # known about its files, so they are reported as not imported.
    error = future.result(raise_on_failure=False)
    return JobOutcome(item.batch_id, datastore_id, None, JobStatus.FAILED,
                      f"Import task ended {state.name}: {error}", landing=landing)
