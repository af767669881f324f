"""DICOMweb requests as clients send them: plain HTTP (no SDK has these
operations), signed with botocore's SigV4 signer for ``medical-imaging``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

REGION = "us-east-1"


def signed_headers(
    method: str,
    url: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    key: tuple[str, str] = ("local", "local"),
) -> dict[str, str]:
    """The headers to send: the given ones, signed over ``body`` (or over the
    payload hash a given ``x-amz-content-sha256`` declares)."""
    request = AWSRequest(method=method, url=url, data=body,
                         headers={"Host": urlsplit(url).netloc, **(headers or {})})
    SigV4Auth(Credentials(*key), "medical-imaging", REGION).add_auth(request)
    return dict(request.headers.items())


def signed_post(
    url: str,
    body: bytes,
    content_type: str,
    *,
    chunked: bool = False,
    headers: dict[str, str] | None = None,
    key: tuple[str, str] = ("local", "local"),
) -> requests.Response:
    """POST ``body``; ``chunked`` sends it with Transfer-Encoding: chunked
    (requests does for a generator), signed over the same bytes."""
    sent = signed_headers("POST", url, body, {"Content-Type": content_type, **(headers or {})},
                          key)
    data: bytes | Iterator[bytes] = _pieces(body, 64 * 1024) if chunked else body
    return requests.post(url, data=data, headers=sent, timeout=120)


def _pieces(body: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def multipart(parts: Iterable[bytes], boundary: str = "stow-boundary-7d3f",
              part_type: str | None = "application/dicom") -> bytes:
    """A multipart/related body of ``parts`` (each with its Content-Type
    header unless ``part_type`` is None)."""
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\n".encode()
        if part_type is not None:
            out += f"Content-Type: {part_type}\r\n".encode()
        out += b"\r\n" + part + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def dicom_json_value(item: dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON object, or None."""
    values = item.get(tag, {}).get("Value")
    return values[0] if values else None
