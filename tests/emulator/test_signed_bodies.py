"""Signed requests as real clients send them, and bodies checked as they
stream: a wrong signature is refused before its body is read, whatever the
body's size; what depends on the body is checked as it arrives.

Requests are built with botocore's own SigV4 signer on an ``AWSRequest``, as
DICOMweb clients do (HealthImaging's DICOMweb API is in no SDK), and sent to
an existing medical-imaging route (CreateDatastore).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotocoreCredentials
from botocore.exceptions import ClientError

from emulator.config import Credentials, ServiceConfig
from emulator.edge.server import LocalService
from tests.local_service import endpoint_printed, local_service_process

REPO = Path(__file__).resolve().parents[2]
KEY, SECRET = "AKIDSIGNEDBODY", "s3cr3t/body"
STREAMING = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@pytest.fixture
def verifying() -> Iterator[LocalService]:
    config = ServiceConfig(credentials=Credentials(KEY, SECRET), stop_grace_seconds=0)
    with LocalService(config=config) as svc:
        yield svc


def create_datastore_body(name: str) -> bytes:
    return json.dumps({"datastoreName": name, "clientToken": name}).encode()


def sign(svc: LocalService, body: bytes, headers: dict[str, str], secret: str = SECRET,
         host: str | None = None) -> dict[str, str]:
    """The headers botocore's SigV4 signer gives a POST /datastore."""
    request = AWSRequest("POST", f"http://{host or f'127.0.0.1:{svc.port}'}/datastore",
                         data=body, headers={"Content-Type": "application/json", **headers})
    if host:
        request.headers["Host"] = host
    SigV4Auth(BotocoreCredentials(KEY, secret), "medical-imaging", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def send(svc: LocalService, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str],
                                                                           bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=30)
    try:
        connection.request("POST", "/datastore", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def aws_chunked(headers: dict[str, str], body: bytes, secret: str = SECRET,
                size: int = 40) -> bytes:
    """The body in aws-chunked framing, each chunk signed after the one
    before, from the request's own (seed) signature, as AWS's chunked-upload
    signing documents it."""
    seed = re.search(r"Signature=([0-9a-f]{64})", headers["Authorization"])[1]  # type: ignore[index]
    timestamp = headers["X-Amz-Date"]
    scope = f"{timestamp[:8]}/us-east-1/medical-imaging/aws4_request"
    key = f"AWS4{secret}".encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    framed, previous = b"", seed
    for chunk in [body[i:i + size] for i in range(0, len(body), size)] + [b""]:
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", timestamp, scope, previous,
                             EMPTY_SHA256, hashlib.sha256(chunk).hexdigest()])
        previous = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        framed += f"{len(chunk):x};chunk-signature={previous}\r\n".encode() + chunk + b"\r\n"
    return framed


def datastore_names(svc: LocalService) -> list[str]:
    mi = boto3.client("medical-imaging", endpoint_url=svc.endpoint, region_name="us-east-1",
                      aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                      config=Config(inject_host_prefix=False))
    return [store["datastoreName"] for store in mi.list_datastores()["datastoreSummaries"]]


def streaming_headers(body: bytes) -> dict[str, str]:
    return {"X-Amz-Content-SHA256": STREAMING, "Content-Encoding": "aws-chunked",
            "x-amz-decoded-content-length": str(len(body))}


class TestPayloadHashForms:
    def test_the_body_hash_botocore_leaves_undeclared(self, verifying: LocalService) -> None:
        body = create_datastore_body("undeclared")
        status, _, answer = send(verifying, sign(verifying, body, {}), body)
        assert (status, json.loads(answer)["datastoreStatus"]) == (200, "CREATING")

        other = create_datastore_body("undeclareX")
        status, headers, _ = send(verifying, sign(verifying, body, {}), other)
        assert (status, headers["x-amzn-errortype"]) == (403, "InvalidSignatureException")

    def test_a_declared_hex_hash(self, verifying: LocalService) -> None:
        body = create_datastore_body("declared")
        headers = sign(verifying, body, {"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()})
        assert send(verifying, headers, body)[0] == 200

        status, answer_headers, _ = send(verifying, headers, create_datastore_body("declareX"))
        assert (status, answer_headers["x-amzn-errortype"]) == (403, "InvalidSignatureException")

    def test_streaming_aws_chunked_with_chunk_signatures(self, verifying: LocalService) -> None:
        """AWS's STOW-RS example sends the body this way."""
        body = create_datastore_body("streamed")
        headers = sign(verifying, b"", streaming_headers(body))
        framed = aws_chunked(headers, body)

        status, _, answer = send(verifying, headers, framed)

        assert status == 200, answer
        assert datastore_names(verifying) == ["streamed"]

    @pytest.mark.parametrize("tamper", ["data", "chunk signature", "final chunk signature"])
    def test_a_tampered_chunk_is_refused(self, verifying: LocalService, tamper: str) -> None:
        body = create_datastore_body("tampered")
        headers = sign(verifying, b"", streaming_headers(body))
        framed = aws_chunked(headers, body)
        if tamper == "data":
            framed = framed.replace(b"tampered", b"tamperex", 1)
        elif tamper == "chunk signature":
            framed = re.sub(rb"chunk-signature=[0-9a-f]", b"chunk-signature=x", framed, count=1)
        else:
            framed = framed[:-5] + b"0\r\n\r\n"  # the last signature's last hex digit

        status, answer_headers, _ = send(verifying, headers, framed)

        assert (status, answer_headers["x-amzn-errortype"]) == (403, "InvalidSignatureException")
        assert datastore_names(verifying) == []

    def test_streaming_without_credentials_is_decoded(self, service: LocalService) -> None:
        body = create_datastore_body("unverified")
        headers = sign(service, b"", streaming_headers(body))

        status, _, answer = send(service, headers, aws_chunked(headers, body, size=7))

        assert status == 200, answer


class TestHostWithoutPort:
    """dicomweb-client sends ``Host: 127.0.0.1``, without the port."""

    @pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
    def test_loopback_without_port(self, verifying: LocalService, host: str) -> None:
        body = create_datastore_body("hostonly")
        assert send(verifying, sign(verifying, body, {}, host=host), body)[0] == 200

    def test_another_name_without_port_is_refused(self, verifying: LocalService) -> None:
        body = create_datastore_body("rebound")
        status, headers, _ = send(verifying, sign(verifying, body, {}, host="evil.example"), body)
        assert (status, headers["x-amzn-errortype"]) == (403, "AccessDeniedException")


def peak_memory_bytes(pid: int) -> int:
    """The process's peak resident memory (Linux's VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)[1]) * 1024  # type: ignore[index]


@pytest.fixture
def verifying_process(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """``dicom-import local --credentials`` in a process of its own, whose
    memory can be read: (its pid, its endpoint)."""
    with local_service_process(tmp_path / "service.log", "--port", "0", "--credentials",
                               f"{KEY}:{SECRET}") as (process, printed):
        yield process.pid, endpoint_printed(printed)


BIG = 300 << 20


@pytest.mark.slow
def test_a_wrong_secret_is_refused_before_the_body_is_read(
    verifying_process: tuple[int, str],
) -> None:
    """4 x 300 MB uploads with a known key and a wrong secret took the
    service from 404 MB to 2,066 MB: each body was read whole to hash it."""
    pid, endpoint = verifying_process
    before = peak_memory_bytes(pid)

    # As boto3 sends a PutObject: the body only after "100 Continue".
    assert put_big(endpoint, BIG, expect_continue=True) == (403, False)
    assert peak_memory_bytes(pid) - before < 100 << 20

    # A client that sends the body regardless gets its answer, the body dropped.
    assert put_big(endpoint, BIG, expect_continue=False) == (403, True)
    assert peak_memory_bytes(pid) - before < 100 << 20


def put_big(endpoint: str, size: int, expect_continue: bool) -> tuple[int, bool]:
    """A PUT of ``size`` zero bytes signed with a wrong secret: the status it
    got, and whether its body was sent."""
    request = AWSRequest("PUT", f"{endpoint}/bucket/big", headers={
        "X-Amz-Content-SHA256": hashlib.sha256(b"").hexdigest(),  # not hashed: refused anyway
        "Content-Length": str(size),
        **({"Expect": "100-continue"} if expect_continue else {}),
    })
    SigV4Auth(BotocoreCredentials(KEY, "wrong"), "s3", "us-east-1").add_auth(request)
    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    head = "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(f"PUT /bucket/big HTTP/1.1\r\nHost: {host}:{port}\r\n{head}\r\n".encode())
        reader = sock.makefile("rb")
        if expect_continue:
            status = int(reader.readline().split()[1])
            if status != 100:
                return status, False  # answered on the headers alone
            reader.readline()  # the blank line that ends "100 Continue"
        piece = b"\0" * (1 << 20)
        for _ in range(size // len(piece)):
            sock.sendall(piece)
        status, sent = int(reader.readline().split()[1]), True
        return status, sent


def test_s3_with_a_known_key_and_wrong_secret_still_gets_its_error(
    verifying: LocalService,
) -> None:
    """Checked from the headers alone, the refusal is the one AWS gives."""
    s3 = boto3.client("s3", endpoint_url=verifying.endpoint, region_name="us-east-1",
                      aws_access_key_id=KEY, aws_secret_access_key="wrong",
                      config=Config(retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket="bucket", Key="k", Body=io.BytesIO(b"x" * (1 << 20)))
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_a_signed_body_read_to_its_end_reaches_moto(verifying: LocalService) -> None:
    """The declared hash is checked as the body streams; the body moto gets
    is the one that was checked."""
    s3 = boto3.client("s3", endpoint_url=verifying.endpoint, region_name="us-east-1",
                      aws_access_key_id=KEY, aws_secret_access_key=SECRET)
    s3.create_bucket(Bucket="bucket")
    body = os.urandom(3 << 20)
    s3.put_object(Bucket="bucket", Key="k", Body=body)
    assert s3.get_object(Bucket="bucket", Key="k")["Body"].read() == body

