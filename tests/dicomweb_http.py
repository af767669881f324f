"""DICOMweb requests against the local service, signed by the project's own
signer (config.sigv4: botocore's SigV4 with the ``medical-imaging`` signing
name) on plain ``requests`` (no SDK has these operations)."""

from __future__ import annotations

import email.parser
import email.policy
from typing import Any

import requests
from botocore.credentials import Credentials

from config.sigv4 import SigV4


def local_auth(service: Any) -> SigV4:
    """The project's own signer (config.sigv4), with the local service's key."""
    env = service.env()
    return SigV4(Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]),
                 env["AWS_REGION"])


def signed_session(service: Any) -> requests.Session:
    """A session whose requests the local service ``service`` accepts."""
    session = requests.Session()
    session.auth = local_auth(service)
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
