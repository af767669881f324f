"""The local service stays bounded in memory whatever a client sends: request
bodies over what the API allows are refused unread, deeply nested JSON is a
400, errors quote a cut value, and the service's peak memory stays under a
bound while abusive bodies arrive concurrently."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from emulator.config import Credentials as AuthCredentials
from emulator.config import ServiceConfig
from emulator.edge.quoted_values import QUOTED_MAX_CHARS
from emulator.edge.request_bodies import MAX_JSON_DEPTH, max_body_bytes
from emulator.edge.server import LocalService

REPO = Path(__file__).resolve().parents[2]


def signed_headers(
    svc: LocalService, target: str, headers: dict[str, str], key: tuple[str, str]
) -> dict[str, str]:
    """A medical-imaging signature over the headers (the service, with no
    credentials configured, accepts any signed request whatever its body)."""
    request = AWSRequest("POST", f"{svc.endpoint}{target}", headers=headers, data=b"")
    SigV4Auth(Credentials(*key), "medical-imaging", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def send(
    svc: LocalService, target: str, headers: dict[str, str], body: bytes,
    key: tuple[str, str] = ("local", "local"),
) -> tuple[int, dict[str, str], bytes]:
    """One POST written on a raw socket, so that the declared length and the
    bytes sent may differ, as an abusive client's do."""
    head = "".join(f"{k}: {v}\r\n" for k, v in signed_headers(svc, target, headers, key).items())
    with socket.create_connection(("127.0.0.1", svc.port), timeout=15) as connection:
        connection.sendall(
            f"POST {target} HTTP/1.1\r\nHost: {svc.host}:{svc.port}\r\n{head}\r\n".encode()
        )
        connection.sendall(body)
        reply = connection.makefile("rb")
        status = int(reply.readline().split()[1])
        answer: dict[str, str] = {}
        while (line := reply.readline().decode().strip()):
            name, _, value = line.partition(":")
            answer[name.lower()] = value.strip()
        return status, answer, reply.read(int(answer.get("content-length", 0)))


def test_a_body_declared_over_the_cap_is_refused_before_it_is_read(service: LocalService) -> None:
    """60 MB declared, 64 KB sent: the answer comes without the rest."""
    status, headers, body = send(
        service, "/datastore",
        {"Content-Type": "application/json", "Content-Length": str(60 << 20)},
        b" " * (64 << 10),
    )
    assert (status, headers["x-amzn-errortype"]) == (413, "ValidationException")
    assert json.loads(body)["message"] == (
        f"The request body is {60 << 20} bytes; a HealthImaging request body is at most "
        f"{max_body_bytes()} bytes"
    )


def test_signature_checks_do_not_read_an_oversized_body() -> None:
    """With --credentials the signature hashes the body: the cap comes first."""
    key = ("AKIDLOCAL", "secret")
    with LocalService(config=ServiceConfig(credentials=AuthCredentials(*key))) as verifying:
        status, headers, _ = send(
            verifying, "/datastore",
            {"Content-Type": "application/json", "Content-Length": str(60 << 20)},
            b" " * (64 << 10), key,
        )
    assert (status, headers["x-amzn-errortype"]) == (413, "ValidationException")


def test_a_chunked_body_is_read_no_further_than_the_cap(service: LocalService) -> None:
    chunk = b" " * (64 << 10)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)) + b"0\r\n\r\n"
    status, headers, body = send(
        service, "/datastore",
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}, chunks,
    )
    assert (status, headers["x-amzn-errortype"]) == (413, "ValidationException")
    assert f"at most {max_body_bytes()} bytes" in json.loads(body)["message"]


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 40_000])
def test_deeply_nested_json_is_a_validation_exception(service: LocalService, depth: int) -> None:
    nested = b'{"datastoreName": ' + b"[" * depth + b"]" * depth + b"}"
    status, headers, body = send(
        service, "/datastore",
        {"Content-Type": "application/json", "Content-Length": str(len(nested))}, nested,
    )
    assert (status, headers["x-amzn-errortype"]) == (400, "ValidationException")
    assert json.loads(body)["message"] == (
        f"The request body is nested deeper than {MAX_JSON_DEPTH} levels"
    )


def test_an_error_quotes_a_long_value_cut(mi: Any) -> None:
    with pytest.raises(ClientError) as refused:
        mi.create_datastore(datastoreName="n" * 60_000)
    message = refused.value.response["Error"]["Message"]
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert f"Value '{'n' * QUOTED_MAX_CHARS}… (60000 characters)' at 'datastoreName'" in message
    assert len(message) < 500


def test_memory_stays_bounded_under_concurrent_oversized_bodies() -> None:
    """Eight clients each sending a 60 MB body at once: the service, in a
    fresh interpreter so that its peak is its own, grows by less than the
    documented bound (docs: README, local service)."""
    script = textwrap.dedent(
        """
        import json, resource, threading
        from emulator.edge.server import LocalService
        from tests.emulator.test_bounds import send

        with LocalService() as svc:
            send(svc, "/datastore", {"Content-Type": "application/json",
                                     "Content-Length": "2"}, b"{}")  # code paths loaded
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            body = b" " * (60 << 20)
            statuses = []

            def one():
                try:
                    statuses.append(send(svc, "/datastore", {
                        "Content-Type": "application/json",
                        "Content-Length": str(len(body))}, body)[0])
                except OSError as error:  # refused, and the rest of the body with it
                    statuses.append(type(error).__name__)

            threads = [threading.Thread(target=one) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"statuses": statuses, "grew_kib": after - before}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
        cwd=REPO, env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["statuses"] == [413] * 8
    assert result["grew_kib"] < 200 * 1024
