"""The local endpoint keeps connections alive, as AWS endpoints do, and
holds its ground: strict framing, idle connections closed, no thread per
connection."""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
import threading
from urllib.parse import urlparse

import pytest

from emulator.config import ServiceConfig
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


def _exchange(svc: LocalService, raw: bytes, wait: float = 10) -> tuple[bytes, bool]:
    """Send ``raw`` as is; what came back, and whether the service closed
    the connection (False: it was still open after ``wait`` seconds of silence)."""
    with socket.create_connection(("127.0.0.1", svc.port), timeout=wait) as sock:
        sock.sendall(raw)
        received = b""
        try:
            while data := sock.recv(65536):
                received += data
        except TimeoutError:
            return received, False
        return received, True


def _statuses(received: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"^HTTP/1\.[01] (\d{3}) ", received, re.M)]


@pytest.mark.parametrize("framing", [
    [b"Content-Length: 0", b"Content-Length: 60"],
    [b"Content-Length: 1_0"],
    [b"Content-Length: +5"],
    [b"Content-Length: -1"],
    [b"Content-Length: 5", b"Transfer-Encoding: chunked"],
    [b"Content-Length : 5"],
])
def test_ambiguous_framing_is_one_400_and_close(
    service: LocalService, framing: list[bytes]
) -> None:
    """Read one way, such a request carries a second one in its body, which
    got a response of its own: a proxy in front would pair the answers with
    the wrong requests."""
    host = f"Host: 127.0.0.1:{service.port}".encode()
    smuggled = b"GET /_emulator/health HTTP/1.1\r\n" + host + b"\r\n\r\n"
    request = (b"POST /_emulator/health HTTP/1.1\r\n" + host + b"\r\n"
               + b"\r\n".join(framing) + b"\r\n\r\n" + smuggled)

    received, closed = _exchange(service, request)

    assert _statuses(received) == [400]
    assert b"connection: close" in received.lower()
    assert closed


def test_a_request_refused_on_its_headers_is_answered_before_its_body(
    service: LocalService,
) -> None:
    """Neither the signature nor anything else waits for the body: the
    answer comes with only the headers sent."""
    connection = _connect(service)
    connection.putrequest("PUT", "/bucket/key")
    connection.putheader("Content-Length", str(300 << 20))
    connection.endheaders()

    assert connection.getresponse().status == 403  # not signed
    connection.close()


def test_expect_100_continue_is_answered_when_the_body_is_read(
    service: LocalService,
) -> None:
    """A client that waits for "100 Continue" never sends the body of a
    request refused on its headers."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall((f"PUT /bucket/key HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\n"
                      f"Expect: 100-continue\r\nContent-Length: {300 << 20}\r\n\r\n").encode())
        answer = sock.recv(65536)
    assert _statuses(answer) == [403]


def test_idle_connections_are_closed() -> None:
    """Between requests, and before a first one."""
    with LocalService(config=ServiceConfig(idle_timeout_seconds=0.2)) as service:
        connection = _connect(service)
        connection.request("GET", "/_emulator/health")
        connection.getresponse().read()
        assert connection.sock is not None
        assert connection.sock.recv(1) == b""  # closed by the service
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as silent:
            said = b""
            while data := silent.recv(65536):  # a timeout here: never closed
                said += data
            assert _statuses(said) in ([], [408])


def test_idle_connections_hold_no_thread_each(service: LocalService) -> None:
    """200 kept-alive connections held 204 threads."""
    before = threading.active_count()
    connections = [_connect(service) for _ in range(200)]
    try:
        for connection in connections:
            connection.request("GET", "/_emulator/health")
            assert connection.getresponse().read() == b'{"status": "ok"}'
        assert threading.active_count() - before < 50
        fresh = _connect(service)
        fresh.request("GET", "/_emulator/health")
        assert fresh.getresponse().status == 200
        fresh.close()
    finally:
        for connection in connections:
            connection.close()
