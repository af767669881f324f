from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
)
from prefect.states import Failed

from tasks.backoff import retry_if_transient
from tasks.import_jobs import DatastoreError


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}}, "Operation")


@pytest.mark.parametrize("error", [
    _client_error("ThrottlingException"),
    _client_error("ServiceQuotaExceededException"),
    _client_error("InternalServerException"),
    ConnectionClosedError(endpoint_url="http://x"),
])
def test_a_task_retries_what_may_pass(error: Exception) -> None:
    assert retry_if_transient(None, None, Failed(data=error))


@pytest.mark.parametrize("error", [
    _client_error("ResourceNotFoundException"),
    _client_error("ValidationException"),
    _client_error("AccessDeniedException"),
    NoCredentialsError(),
    EndpointConnectionError(endpoint_url="http://mistyped:4566"),
    DatastoreError("Data store 0 does not exist."),
])
def test_a_task_does_not_retry_what_cannot_pass(error: Exception) -> None:
    assert not retry_if_transient(None, None, Failed(data=error))
