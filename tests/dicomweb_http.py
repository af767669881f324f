"""DICOMweb requests against the local service, signed as AWS documents it:
botocore's SigV4 signer with the ``medical-imaging`` signing name, on plain
``requests`` (no SDK has these operations)."""

from __future__ import annotations

import email.parser
import email.policy
from typing import Any

import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SIGNING_NAME = "medical-imaging"
# Headers requests adds on its own that a signature need not cover.
_UNSIGNED = frozenset({"connection", "accept-encoding", "user-agent", "content-length"})


class SigV4(requests.auth.AuthBase):
    """A requests auth that signs each request with botocore's SigV4 signer.
    The Host the request will carry is the one signed (a client may set one
    without the port)."""

    def __init__(self, access_key: str, secret_key: str, region: str) -> None:
        self.credentials = Credentials(access_key, secret_key)
        self.region = region

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _UNSIGNED}
        signed = AWSRequest(method=request.method, url=request.url, headers=headers,
                            data=request.body or b"")
        SigV4Auth(self.credentials, SIGNING_NAME, self.region).add_auth(signed)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            if name in signed.headers:
                request.headers[name] = signed.headers[name]
        return request


def signed_session(service: Any) -> requests.Session:
    """A session whose requests the local service ``service`` accepts."""
    env = service.env()
    session = requests.Session()
    session.auth = SigV4(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                         env["AWS_REGION"])
    return session


def multipart_parts(response: requests.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response,
    read with the standard library's MIME parser."""
    head = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        head + response.content)
    assert message.get_content_type() == "multipart/related", message.get_content_type()
    return [(str(part["Content-Type"]), bytes(part.get_payload(decode=True)))
            for part in message.iter_parts()]
