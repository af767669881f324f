"""Fixtures for the local HealthImaging service: tests reach it only through
boto3 (and moto's S3 on the same endpoint), as a real client would."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from emulator.config import ServiceConfig
from emulator.edge.server import LocalService
from tests.local_service import empty_s3

BUCKET = "dicom-bucket"


@pytest.fixture
def service() -> Iterator[LocalService]:
    empty_s3()
    with LocalService(
        # No stop grace: a job a test leaves running would hold its teardown 3 s.
        config=ServiceConfig(datastore_transition_seconds=0.05, write_seconds=0.05,
                             stop_grace_seconds=0)
    ) as svc:
        yield svc


def make_clients(svc: LocalService) -> tuple[Any, Any]:
    creds = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    mi = boto3.client(
        "medical-imaging",
        endpoint_url=svc.endpoint,
        region_name="us-east-1",
        config=Config(inject_host_prefix=False, retries={"max_attempts": 1, "mode": "standard"}),
        **creds,
    )
    s3 = boto3.client("s3", endpoint_url=svc.endpoint, region_name="us-east-1", **creds)
    return mi, s3


@pytest.fixture
def mi(service: LocalService) -> Any:
    return make_clients(service)[0]


@pytest.fixture
def s3(service: LocalService) -> Any:
    client = make_clients(service)[1]
    client.create_bucket(Bucket=BUCKET)
    return client


def wait_for(check: Any, timeout: float = 20.0, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def wait_datastore_active(mi: Any, datastore_id: str) -> None:
    wait_for(
        lambda: (
            mi.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreStatus"]
            == "ACTIVE"
        )
    )


def wait_job_done(mi: Any, datastore_id: str, job_id: str, timeout: float = 120) -> dict:
    def done() -> dict | None:
        props = mi.get_dicom_import_job(datastoreId=datastore_id, jobId=job_id)["jobProperties"]
        return props if props["jobStatus"] in ("COMPLETED", "FAILED") else None

    return wait_for(done, timeout=timeout, interval=0.05)


@pytest.fixture
def datastore_id(mi: Any) -> str:
    ds = mi.create_datastore(datastoreName="test-store")["datastoreId"]
    wait_datastore_active(mi, ds)
    return ds


ROLE = "arn:aws:iam::123456789012:role/ImportRole"
