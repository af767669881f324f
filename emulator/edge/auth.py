"""Who may call the local service: every request must carry an AWS signature.

By default any access key is accepted, as local AWS stacks do: a signature
only has to be there, which is what keeps a web page (which cannot sign) from
reading staged data. With ``Credentials`` the signature is recomputed from the
request as it arrived, with botocore's own signers, and must match:

- SigV4 in the ``Authorization`` header: the signed headers, query and path,
  and the payload hash. A declared ``x-amz-content-sha256`` (S3) must be the
  hash of the body received; ``UNSIGNED-PAYLOAD`` and the ``STREAMING-*``
  modes leave the body unsigned, as on AWS (chunk signatures of
  ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` are not checked).
- SigV4 presigned URLs (``X-Amz-Signature``), with their expiry.
- S3's SigV2 (``Authorization: AWS key:signature`` and the ``AWSAccessKeyId``
  / ``Signature`` / ``Expires`` query boto3 still presigns with by default).

Not checked: the clock skew of header signatures (AWS refuses 15 minutes).
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import io
import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from botocore.auth import SIGV4_TIMESTAMP, HmacV1Auth, S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials as BotocoreCredentials
from werkzeug.wrappers import Request

from emulator.config import Credentials
from emulator.edge.quoted_values import quoted
from emulator.edge.request_bodies import BUFFERED_BODY

_V4 = "AWS4-HMAC-SHA256"
_V4_HEADER = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-fA-F]+)\s*$"
)
_V2_HEADER = re.compile(r"^AWS (?P<key>[^:\s]+):(?P<signature>\S+)$")
_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


class AuthError(Exception):
    """A refused request. ``reason`` is one of: missing, malformed,
    unknown_key, signature, expired, payload_hash; each service renders it as
    AWS names it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Signature:
    """What a request says about its signature."""

    version: int  # 2 or 4
    presigned: bool
    access_key: str
    signature: str
    # SigV4 only.
    region: str = ""
    service: str = ""
    signed_headers: tuple[str, ...] = ()


def find_signature(environ: dict[str, Any]) -> Signature | None:
    """The request's signature, or None when it has none at all.

    Raises AuthError("malformed") for an ``Authorization`` header or a
    presigned query that claims to be a signature and is not one."""
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header:
        return _from_header(header)
    query = dict(query_pairs(environ))
    if "X-Amz-Signature" in query or "X-Amz-Credential" in query:
        return _from_v4_query(query)
    if "AWSAccessKeyId" in query and "Signature" in query:
        return Signature(2, True, query["AWSAccessKeyId"], query["Signature"])
    return None


def _from_header(header: str) -> Signature:
    found = _V4_HEADER.match(header)
    if found:
        return _v4(False, found["credential"], found["signed"], found["signature"])
    found = _V2_HEADER.match(header)
    if found:
        return Signature(2, False, found["key"], found["signature"])
    raise AuthError("malformed", "The Authorization header is not an AWS signature.")


def _from_v4_query(query: dict[str, str]) -> Signature:
    needed = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
              "X-Amz-SignedHeaders", "X-Amz-Signature")
    missing = [name for name in needed if not query.get(name)]
    if missing or query["X-Amz-Algorithm"] != _V4:
        raise AuthError("malformed", f"The presigned URL lacks {', '.join(missing) or 'SigV4'}.")
    return _v4(True, query["X-Amz-Credential"], query["X-Amz-SignedHeaders"],
               query["X-Amz-Signature"])


def _v4(presigned: bool, credential: str, signed: str, signature: str) -> Signature:
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not re.fullmatch(r"\d{8}", parts[1]):
        raise AuthError("malformed", f"The credential scope {quoted(credential)!r} is malformed.")
    return Signature(4, presigned, parts[0], signature.lower(), parts[2], parts[3],
                     tuple(signed.lower().split(";")))


def verify(
    environ: dict[str, Any],
    signature: Signature,
    credentials: Credentials,
    body_sha256: str | None = None,
) -> None:
    """Raise AuthError unless ``signature`` was made with ``credentials`` over
    this very request. May read the body, and then leaves it readable again;
    a caller that hashed the body as it streamed gives ``body_sha256`` (hex)
    instead, and the body is not read."""
    if signature.access_key != credentials.access_key:
        raise AuthError("unknown_key",
                        f"The access key {quoted(signature.access_key)!r} is not known.")
    if signature.version == 4:
        _verify_v4(environ, signature, credentials, body_sha256)
    else:
        _verify_v2(environ, signature, credentials)


def _verify_v4(
    environ: dict[str, Any],
    signature: Signature,
    credentials: Credentials,
    body_sha256: str | None,
) -> None:
    query = query_pairs(environ)
    headers = _headers(environ)
    if signature.presigned:
        params = dict(query)
        timestamp = params["X-Amz-Date"]
        _refuse_expired(_epoch(timestamp) + _int(params["X-Amz-Expires"]))
        query = [(k, v) for k, v in query if k != "X-Amz-Signature"]
    else:
        timestamp = headers.get("X-Amz-Date") or _v4_date(headers.get("Date"))
    if "host" not in signature.signed_headers:
        raise AuthError("signature", "The signed headers must include host.")
    declared = headers.get("X-Amz-Content-SHA256")
    if declared:
        payload_hash = declared
    elif signature.presigned and signature.service == "s3":
        payload_hash = UNSIGNED_PAYLOAD
    else:
        payload_hash = body_sha256 or hashlib.sha256(read_body(environ)).hexdigest()
    if (
        declared and _HEX_SHA256.match(declared)
        and (body_sha256 or hashlib.sha256(read_body(environ)).hexdigest()) != declared
    ):
        raise AuthError("payload_hash", "The body does not match its x-amz-content-sha256.")
    signer_class = _DeclaredS3SigV4 if signature.service == "s3" else _DeclaredSigV4
    signer = signer_class(
        BotocoreCredentials(credentials.access_key, credentials.secret_key),
        signature.service, signature.region,
    )
    signer.signed = signature.signed_headers
    signer.payload_hash = payload_hash
    request = AWSRequest(method=environ["REQUEST_METHOD"], url=_url(environ), headers=headers)
    request.params = query
    request.context["timestamp"] = timestamp
    string_to_sign = signer.string_to_sign(request, signer.canonical_request(request))
    _compare(signer.signature(string_to_sign, request), signature.signature)


class _AsDeclared:
    """Makes botocore's signer use what the client declared instead of
    choosing: the headers it signed and, when no x-amz-content-sha256 header
    declares it (botocore then signs with that header), the payload hash."""

    signed: tuple[str, ...] = ()
    payload_hash = ""

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        chosen = HTTPHeaders()
        for name in self.signed:
            for value in request.headers.get_all(name) or [""]:
                chosen[name] = value
        return chosen

    def payload(self, request: AWSRequest) -> str:
        return self.payload_hash


# botocore ships no type information: its signers are Any to mypy.
class _DeclaredSigV4(_AsDeclared, SigV4Auth):  # type: ignore[misc]
    pass


class _DeclaredS3SigV4(_AsDeclared, S3SigV4Auth):  # type: ignore[misc]
    """S3 signs the path as sent, without normalising it."""


def _verify_v2(environ: dict[str, Any], signature: Signature, credentials: Credentials) -> None:
    headers = _headers(environ)
    if signature.presigned:
        params = dict(query_pairs(environ))
        date = params.get("Expires", "")
        _refuse_expired(_int(date))
    else:
        date = headers.get("Date", "")
    signer = _V2Signer(BotocoreCredentials(credentials.access_key, credentials.secret_key))
    signer.date = date
    split = urlsplit(_url(environ))
    expected = signer.sign_string(
        signer.canonical_string(environ["REQUEST_METHOD"], split, headers)
    )
    _compare(expected, signature.signature)


class _V2Signer(HmacV1Auth):  # type: ignore[misc]  # untyped botocore, as above
    """botocore's SigV2 signer, with the request's date (or expiry) instead of now."""

    date = ""

    def _get_date(self) -> str:
        return self.date


def _compare(expected: str, given: str) -> None:
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise AuthError(
            "signature",
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method.",
        )


def _refuse_expired(expires_at: float) -> None:
    if time.time() > expires_at:
        raise AuthError("expired", "Request has expired")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise AuthError("malformed", f"{quoted(text)!r} is not a number of seconds.") from None


def _epoch(timestamp: str) -> float:
    try:
        return calendar.timegm(time.strptime(timestamp, SIGV4_TIMESTAMP))
    except ValueError:
        raise AuthError("malformed", f"{quoted(timestamp)!r} is not an X-Amz-Date.") from None


def _v4_date(date: str | None) -> str:
    if not date:
        raise AuthError("malformed", "The signed request has neither X-Amz-Date nor Date.")
    try:
        return parsedate_to_datetime(date).strftime(SIGV4_TIMESTAMP)
    except (TypeError, ValueError):
        raise AuthError("malformed", f"{quoted(date)!r} is not an HTTP date.") from None


def _headers(environ: dict[str, Any]) -> HTTPHeaders:
    headers = HTTPHeaders()
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").lower()] = value
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = environ[key]
    return headers


def _url(environ: dict[str, Any]) -> str:
    """The URL as the client sent it: the path still percent-encoded, as signed."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    path = raw.split("?", 1)[0] if raw else quote(environ.get("PATH_INFO", ""))
    query = environ.get("QUERY_STRING", "")
    return f"http://{environ.get('HTTP_HOST', '')}{path}" + (f"?{query}" if query else "")


def query_pairs(environ: dict[str, Any]) -> list[tuple[str, str]]:
    """The query's pairs, decoded as SigV4 encodes them (``+`` is a plus)."""
    pairs = []
    for item in environ.get("QUERY_STRING", "").split("&"):
        if item:
            key, _, value = item.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def read_body(environ: dict[str, Any]) -> bytes:
    """The request body, read once and put back for the application."""
    body: bytes | None = environ.get(BUFFERED_BODY)
    if body is None:
        body = Request(environ).get_data()
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ[BUFFERED_BODY] = body
    return body

