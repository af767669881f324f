"""import_batch needs only a JobRecorder, not the whole ledger: driven here
with an in-memory one against the local service."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from emulator.samples import series_spec, write_ct_series
from tasks.batch import Batch, make_batches
from tasks.import_jobs import JobRecorder, import_batch, resolve_datastore
from tasks.job_slots import ensure_job_slots
from tasks.ledger import RunLedger
from tasks.poll import JobOutcome
from tasks.statuses import FileValidity, JobStatus
from tasks.validate import ValidationRecord

BUCKET = "import-batch"
ROLE = "arn:aws:iam::123456789012:role/HealthImagingImportRole"


@dataclass
class MemoryRecorder:
    """The record of jobs, in memory. ``earlier_runs`` are the run IDs the
    next jobs are said to have been started by (a rerun got them back)."""

    run_id: str = "this-run"
    earlier_runs: list[str] = field(default_factory=list)
    started: list[tuple[str, str, str]] = field(default_factory=list)
    ended: list[JobOutcome] = field(default_factory=list)

    def failed_attempts(self, input_s3_uri: str, batch_digest: str) -> int:
        return sum(1 for o in self.ended
                   if o.status is JobStatus.FAILED and o.input_s3_uri == input_s3_uri)

    def record_job_started(self, job_id: str, batch: Batch, input_s3_uri: str) -> str:
        self.started.append((job_id, batch.batch_id, input_s3_uri))
        return self.earlier_runs.pop(0) if self.earlier_runs else self.run_id

    def record_job_status(self, outcome: JobOutcome) -> None:
        self.ended.append(outcome)


@pytest.fixture
def staged(local_aws: Any, tmp_path: Path) -> tuple[str, str, str, Batch]:
    """Two CT slices staged under one batch's input prefix of a new data store."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    records = []
    for path in write_ct_series(tmp_path / "series", 2, series_spec("import-batch"), 16, 16):
        s3.upload_file(str(path), BUCKET, f"staging/run/batch/{path.name}")
        records.append(ValidationRecord(str(path), path.name, path.stat().st_size,
                                        FileValidity.VALID, sha256="s",
                                        study_instance_uid="1", series_instance_uid="2"))
    (batch,) = make_batches(records)
    client = boto3.client("medical-imaging", config=Config(inject_host_prefix=False))
    datastore_id = resolve_datastore(client, "import-batch", create=True,
                                    poll_interval=0.05).datastore_id
    return datastore_id, f"s3://{BUCKET}/staging/run/batch/", f"s3://{BUCKET}/output/", batch


def _import(staged: tuple[str, str, str, Batch], recorder: JobRecorder) -> JobOutcome:
    datastore_id, input_uri, output_uri, batch = staged
    # As the flows do once per run: a job holds a slot of the data store's limit.
    ensure_job_slots(datastore_id)
    return import_batch.fn(datastore_id, batch, input_uri, output_uri, ROLE,
                           poll_interval=0.05, poll_timeout=60, ledger=recorder)


def test_the_ledger_and_a_memory_recorder_are_job_recorders() -> None:
    assert isinstance(RunLedger("sqlite://", "run", "ds"), JobRecorder)
    assert isinstance(MemoryRecorder(), JobRecorder)


def test_a_job_is_recorded_before_the_wait_and_its_end_after(
    staged: tuple[str, str, str, Batch],
) -> None:
    recorder = MemoryRecorder()
    outcome = _import(staged, recorder)

    assert outcome.status is JobStatus.COMPLETED and not outcome.from_earlier_run
    assert recorder.started == [(outcome.job_id, staged[3].batch_id, staged[1])]
    assert [o.job_id for o in recorder.ended] == [outcome.job_id]


def test_an_earlier_runs_failed_job_makes_this_run_start_the_next_attempt(
    local_aws: Any, staged: tuple[str, str, str, Batch],
) -> None:
    local_aws.faults.fail_jobs = 1
    recorder = MemoryRecorder(earlier_runs=["killed-run"])
    outcome = _import(staged, recorder)

    (first, _, _), (second, _, _) = recorder.started
    assert first != second  # a new client token: the attempt counted up
    assert [o.status for o in recorder.ended] == [JobStatus.FAILED, JobStatus.COMPLETED]
    assert outcome.job_id == second and outcome.status is JobStatus.COMPLETED
    assert not outcome.from_earlier_run
