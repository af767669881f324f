"""Polling: wait for an import job to end, without hanging forever.

Import jobs run for minutes to hours. A check comes every 2% of the time
waited so far (between the first interval and two minutes): a job that ended
is noticed within about 2% of its run time, so its slot goes to the next batch
that soon, and a job of hours costs one GetDICOMImportJob every two minutes.
(A schedule growing x1.5 per check noticed the end up to a third of the run
late.) The first interval bounds the request rate: 100 jobs checked every 5 s
make 20 requests/s, within GetDICOMImportJob's 25/s. A timeout returns a
``timed_out`` outcome so the flow can still write its report for everything
else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from tasks.backoff import is_transient
from tasks.interruption import sleep_unless_stopped
from tasks.statuses import TERMINAL, JobStatus, Landing

if TYPE_CHECKING:
    from tasks.stow_answer import StowAnswer


@dataclass(frozen=True)
class JobOutcome:
    batch_id: str
    datastore_id: str
    job_id: str | None
    status: JobStatus
    message: str | None = None
    # The job's own output folder (<output>/<datastoreId>-DicomImport-<jobId>/).
    output_s3_uri: str | None = None
    input_s3_uri: str | None = None
    # The job was started by an earlier run and got back by its client token.
    from_earlier_run: bool = False
    # A STOW-RS request stands where a job would (``job_id`` is its ID): it
    # has no output folder, and its answer is here instead.
    landing: Landing = Landing.JOB
    answer: StowAnswer | None = None


def wait_for_job(
    client: Any,
    datastore_id: str,
    job_id: str,
    batch_id: str,
    poll_interval: float = 5.0,
    timeout: float = 6 * 3600.0,
    max_interval: float = 120.0,
    lag_fraction: float = 0.02,
    sleep: Callable[[float], bool] = sleep_unless_stopped,
    clock: Callable[[], float] = time.monotonic,
) -> JobOutcome:
    """Poll GetDICOMImportJob until COMPLETED/FAILED or ``timeout`` seconds pass,
    every ``lag_fraction`` of the time waited, within [poll_interval, max_interval].
    ``sleep`` returns True when the operator stopped the run: the job is then
    left running, and its outcome keeps the status HealthImaging last gave
    (SUBMITTED or IN_PROGRESS: tasks.statuses.RUNNING)."""
    started = clock()
    deadline = started + timeout
    properties: dict[str, Any] = {}
    while True:
        try:
            properties = client.get_dicom_import_job(
                datastoreId=datastore_id, jobId=job_id
            )["jobProperties"]
        except ClientError as exc:
            if not is_transient(exc):
                raise
        else:
            status = JobStatus(properties["jobStatus"])
            if status in TERMINAL:
                return _outcome(batch_id, datastore_id, job_id, status, properties)
        remaining = deadline - clock()
        if remaining <= 0:
            return _outcome(
                batch_id, datastore_id, job_id, JobStatus.TIMED_OUT, properties,
                message=f"Still {properties.get('jobStatus', 'unknown')} after {timeout:g} s; "
                "stopped waiting (the job may still complete).",
            )
        interval = min(max(poll_interval, lag_fraction * (clock() - started)), max_interval)
        if sleep(min(interval, remaining)):
            # Not read yet (a transient error): StartDICOMImportJob said SUBMITTED.
            running = JobStatus(properties.get("jobStatus", JobStatus.SUBMITTED.value))
            return _outcome(
                batch_id, datastore_id, job_id, running, properties,
                message=f"Stopped waiting (interrupted) while the job was "
                f"{properties.get('jobStatus', 'unknown')}; it goes on in HealthImaging.",
            )


def _outcome(
    batch_id: str,
    datastore_id: str,
    job_id: str,
    status: JobStatus,
    properties: dict[str, Any],
    message: str | None = None,
) -> JobOutcome:
    return JobOutcome(
        batch_id=batch_id,
        datastore_id=datastore_id,
        job_id=job_id,
        status=status,
        message=message or properties.get("message"),
        output_s3_uri=properties.get("outputS3Uri"),
        input_s3_uri=properties.get("inputS3Uri"),
    )
