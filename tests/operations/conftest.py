"""Fixtures for the operations tests: the local HealthImaging service reached
through the standard AWS variables, and parameters for runs against it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from emulator.edge.server import LocalService
from flows.parameters import IngestParameters, RetryParameters

BUCKET = "ops"
DATASTORE = "ops-store"


@pytest.fixture
def service(local_aws: LocalService) -> LocalService:
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return local_aws


def _locations(tmp_path: Path) -> dict[str, Any]:
    return {
        "datastore": DATASTORE,
        "staging_prefix": f"s3://{BUCKET}/staging",
        "output_prefix": f"s3://{BUCKET}/output",
        "report_location": str(tmp_path / "reports"),
        "max_files_per_job": 3,
        "max_concurrent_jobs": 4,
        "poll_interval_seconds": 0.1,
        "poll_timeout_seconds": 120,
        "validation_workers": 1,
    }


def ingest_params(tmp_path: Path, **overrides: Any) -> IngestParameters:
    values = {"source": str(tmp_path / "source"), "create_datastore": True,
              **_locations(tmp_path)}
    return IngestParameters(**{**values, **overrides})


def retry_params(tmp_path: Path, **overrides: Any) -> RetryParameters:
    return RetryParameters(**{**_locations(tmp_path), **overrides})


def medical_imaging() -> Any:
    return boto3.client("medical-imaging", config=Config(inject_host_prefix=False))


def import_jobs(datastore_id: str) -> list[dict[str, Any]]:
    pages = medical_imaging().get_paginator("list_dicom_import_jobs").paginate(
        datastoreId=datastore_id
    )
    return [job for page in pages for job in page["jobSummaries"]]


def imported_by_service(datastore_id: str) -> list[str]:
    """The path below the source of every file the service reports imported,
    over all its jobs, read from the jobs' own output folders: one entry per
    import of a file."""

    client, s3 = medical_imaging(), boto3.client("s3")
    keys: list[str] = []
    for summary in import_jobs(datastore_id):
        job = client.get_dicom_import_job(datastoreId=datastore_id, jobId=summary["jobId"])
        output = job["jobProperties"]["outputS3Uri"].removeprefix("s3://")
        bucket, _, prefix = output.partition("/")
        for name in ("SUCCESS/success.ndjson", "WARNING/warning.ndjson"):
            try:
                body = s3.get_object(Bucket=bucket, Key=f"{prefix.rstrip('/')}/{name}")
            except s3.exceptions.NoSuchKey:
                continue
            keys += [json.loads(line)["inputFile"] for line in body["Body"].read().splitlines()
                     if line.strip()]
    # staging/<run>/<batch>/<path below the source>
    return [key.split("/", 3)[3] for key in keys]


def most_jobs_in_flight(datastore_id: str) -> int:
    """The most import jobs the service had between submission and end at
    one moment, from its own job list (submittedAt, endedAt): what its quota
    of concurrent jobs counts."""
    events: list[tuple[float, int]] = []
    for job in import_jobs(datastore_id):
        assert job.get("endedAt"), f"job {job['jobId']} has not ended"
        # An end sorts before a start at the same instant: that job is gone.
        events += [(job["submittedAt"].timestamp(), 1), (job["endedAt"].timestamp(), -1)]
    running = most = 0
    for _, change in sorted(events):
        running += change
        most = max(most, running)
    return most
