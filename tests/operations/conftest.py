"""Fixtures for the operations tests: the local HealthImaging service reached
through the standard AWS variables, and parameters for runs against it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from botocore.config import Config

from emulator.edge.server import LocalService
from flows.parameters import IngestParameters, RetryParameters
from tests.operations.served import free_port

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
    values = {"source": str(tmp_path / "source"), "only_new": True, **_locations(tmp_path)}
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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL on loopback, from the machine's own binaries (one
    server for the session: tests that need an empty ledger create a database)."""
    initdb = shutil.which("initdb") or next(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                                            None)
    if initdb is None:
        pytest.skip("PostgreSQL binaries are missing (apt-get install postgresql)")
    bin_dir = Path(initdb).parent
    folder = Path(tempfile.mkdtemp(prefix="ledger-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(folder, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = folder / "data"
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                    "-U", "postgres"], check=True, capture_output=True)
    subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l",
                    str(folder / "log"), "-o", f"-p {port} -k {folder} -h 127.0.0.1",
                    "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast",
                        "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a database no ledger has touched yet."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    server = request.getfixturevalue("postgres_url")
    name = f"ledger_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return str(sa.engine.make_url(server).set(database=name))


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
