from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from tasks.poll import wait_for_job
from tasks.statuses import JobStatus

DS = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def client() -> Any:
    return boto3.client("medical-imaging", region_name="us-east-1", aws_access_key_id="x",
                        aws_secret_access_key="x", config=Config(retries={"max_attempts": 1}))


@pytest.fixture
def stub(client: Any) -> Iterator[Stubber]:
    with Stubber(client) as stubber:
        yield stubber


def _job(status: str, message: str | None = None) -> dict[str, Any]:
    properties = {
        "jobId": "j1", "jobName": "n", "jobStatus": status, "datastoreId": DS,
        "dataAccessRoleArn": "arn:aws:iam::123456789012:role/r",
        "inputS3Uri": "s3://b/in/", "outputS3Uri": f"s3://b/out/{DS}-DicomImport-j1/",
    }
    if message:
        properties["message"] = message
    return {"jobProperties": properties}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.sleeps.append(seconds)
        self.now += seconds
        return False  # never stopped


def _wait(client: Any, clock: FakeClock, **kwargs: Any):
    return wait_for_job(client, DS, "j1", "b1", sleep=clock.sleep, clock=clock, **kwargs)


def test_checks_at_a_fraction_of_the_time_waited_until_completed(
    client: Any, stub: Stubber
) -> None:
    """The first interval until the fraction of the time waited exceeds it,
    then that fraction, capped: the end is noticed within that fraction."""
    expected = {"datastoreId": DS, "jobId": "j1"}
    for status in ["SUBMITTED", *["IN_PROGRESS"] * 6, "COMPLETED"]:
        stub.add_response("get_dicom_import_job", _job(status), expected)
    clock = FakeClock()

    outcome = _wait(client, clock, poll_interval=1.0, max_interval=4.0, lag_fraction=0.5)

    assert outcome.status is JobStatus.COMPLETED
    assert outcome.output_s3_uri == f"s3://b/out/{DS}-DicomImport-j1/"
    assert clock.sleeps == [1.0, 1.0, 1.0, 1.5, 2.25, 3.375, 4.0]


def test_failed_job_carries_its_message(client: Any, stub: Stubber) -> None:
    stub.add_response("get_dicom_import_job", _job("FAILED", "input unreadable"))
    outcome = _wait(client, FakeClock())
    assert outcome.status is JobStatus.FAILED
    assert outcome.message == "input unreadable"


def test_throttling_is_waited_out(client: Any, stub: Stubber) -> None:
    stub.add_client_error("get_dicom_import_job", "ThrottlingException", http_status_code=429)
    stub.add_response("get_dicom_import_job", _job("COMPLETED"))
    clock = FakeClock()

    outcome = _wait(client, clock, poll_interval=1.0)

    assert outcome.status is JobStatus.COMPLETED
    assert clock.sleeps == [1.0]


def test_timeout_returns_timed_out_instead_of_hanging(client: Any, stub: Stubber) -> None:
    for _ in range(5):
        stub.add_response("get_dicom_import_job", _job("IN_PROGRESS"))
    clock = FakeClock()

    outcome = _wait(client, clock, poll_interval=4.0, timeout=10.0)

    assert outcome.status is JobStatus.TIMED_OUT
    assert "IN_PROGRESS" in (outcome.message or "")
    assert sum(clock.sleeps) == pytest.approx(10.0)


def test_other_errors_propagate(client: Any, stub: Stubber) -> None:
    stub.add_client_error("get_dicom_import_job", "ResourceNotFoundException",
                          http_status_code=404)
    with pytest.raises(Exception, match="ResourceNotFoundException"):
        _wait(client, FakeClock())
