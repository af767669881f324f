"""The local endpoint keeps connections alive, as AWS endpoints do."""

from __future__ import annotations

import http.client
import io
import json
from urllib.parse import urlparse

import pytest

from emulator.edge.server import LocalService
from tests.emulator.conftest import make_clients


def _connect(svc: LocalService) -> http.client.HTTPConnection:
    endpoint = urlparse(svc.endpoint)
    assert endpoint.hostname is not None
    return http.client.HTTPConnection(endpoint.hostname, endpoint.port, timeout=10)


def test_requests_with_bodies_share_one_connection(service: LocalService) -> None:
    """A request's body is read whole, so the next request on the connection
    starts where it should."""
    connection = _connect(service)
    faults = json.dumps({"job_duration_seconds": 0.5}).encode()
    admin = {"Authorization": f"Bearer {service.admin_token}"}

    connection.request("POST", "/_emulator/faults", body=faults,
                       headers={**admin, "Content-Type": "application/json"})
    first = connection.getresponse()
    first.read()
    socket_used = connection.sock
    connection.request("GET", "/_emulator/faults", headers=admin)
    second = connection.getresponse()

    assert first.status == second.status == 200
    assert first.getheader("Connection") != "close"
    assert connection.sock is socket_used
    assert json.loads(second.read())["job_duration_seconds"] == 0.5


def test_a_put_that_waits_for_100_continue_then_the_next_request(
    service: LocalService,
) -> None:
    """botocore asks for "100 Continue" before a file-like body."""
    _, s3 = make_clients(service)
    s3.create_bucket(Bucket="keep-alive")

    s3.put_object(Bucket="keep-alive", Key="a", Body=io.BytesIO(b"first body"))
    s3.put_object(Bucket="keep-alive", Key="b", Body=io.BytesIO(b"second"))

    assert s3.get_object(Bucket="keep-alive", Key="a")["Body"].read() == b"first body"
    assert s3.get_object(Bucket="keep-alive", Key="b")["Body"].read() == b"second"


def test_stopping_closes_idle_connections() -> None:
    """A stopped service answers nobody, not even a client pooling a
    connection it opened before."""
    service = LocalService().start()
    connection = _connect(service)
    connection.request("GET", "/_emulator/health")
    connection.getresponse().read()

    service.stop()

    with pytest.raises((http.client.HTTPException, OSError)):
        connection.request("GET", "/_emulator/health")
        connection.getresponse()
