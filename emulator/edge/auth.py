"""Who may call the local service: every request must carry an AWS signature.

By default any access key is accepted, as local AWS stacks do: a signature
only has to be there, which is what keeps a web page (which cannot sign) from
reading staged data. With ``Credentials`` the signature is recomputed from the
request as it arrived, with botocore's own signers, and must match:

- SigV4 in the ``Authorization`` header: the signed headers, query and path,
  and the payload hash. Everything the headers hold is checked before any of
  the body is read, so a wrong key or secret is refused unread; what depends
  on the body is checked as it streams (emulator.edge.signed_body):
  - a declared ``x-amz-content-sha256`` hex hash (S3, curl) signs as declared
    and must be the hash of the body received;
  - no declared hash (botocore for medical-imaging): the body's hash, known
    once the body is read, completes the signature;
  - ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` (AWS's STOW-RS example): the seed
    signature at once; for medical-imaging the ``aws-chunked`` body is
    decoded and every chunk's signature checked. S3 leaves the decoding to
    moto, chunk signatures unchecked;
  - ``UNSIGNED-PAYLOAD`` and the other ``STREAMING-*`` modes leave the body
    unsigned, as on AWS.
- SigV4 presigned URLs (``X-Amz-Signature``), with their expiry.
- S3's SigV2 (``Authorization: AWS key:signature`` and the ``AWSAccessKeyId``
  / ``Signature`` / ``Expires`` query boto3 still presigns with by default).

Not checked: the clock skew of header signatures (AWS refuses 15 minutes).
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from botocore.auth import SIGV4_TIMESTAMP, HmacV1Auth, S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials as BotocoreCredentials

from emulator.config import Credentials
from emulator.edge.auth_errors import AuthError
from emulator.edge.quoted_values import quoted
from emulator.edge.signed_body import STREAMING_SIGNED, ChunkSigner, check_hash, decode_aws_chunked
from emulator.state.service_model import SERVICE_NAME

_V4 = "AWS4-HMAC-SHA256"
_V4_HEADER = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-fA-F]+)\s*$"
)
_V2_HEADER = re.compile(r"^AWS (?P<key>[^:\s]+):(?P<signature>\S+)$")
_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True)
class Signature:
    """What a request says about its signature."""

    version: int  # 2 or 4
    presigned: bool
    access_key: str
    signature: str
    # The credential scope's; SigV2 is S3's alone here.
    service: str = "s3"
    # SigV4 only.
    region: str = ""
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
    return Signature(4, presigned, parts[0], signature.lower(), service=parts[3],
                     region=parts[2], signed_headers=tuple(signed.lower().split(";")))


def verify(environ: dict[str, Any], signature: Signature, credentials: Credentials) -> None:
    """Raise AuthError unless ``signature`` was made with ``credentials`` over
    this very request: at once for what the headers hold; for the body, as it
    is read (the reader must read it to its end before trusting it)."""
    if signature.access_key != credentials.access_key:
        raise AuthError("unknown_key",
                        f"The access key {quoted(signature.access_key)!r} is not known.")
    if signature.version == 4:
        _verify_v4(environ, signature, credentials)
    else:
        _verify_v2(environ, signature, credentials)


def _verify_v4(environ: dict[str, Any], signature: Signature, credentials: Credentials) -> None:
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

    method, url = environ["REQUEST_METHOD"], _url(environ)

    def signed_with(payload_hash: str) -> None:
        expected = _v4_signature(method, url, signature, credentials, query, headers, timestamp,
                                 payload_hash)
        _compare(expected, signature.signature)

    declared = headers.get("X-Amz-Content-SHA256")
    if not declared and signature.presigned and signature.service == "s3":
        declared = UNSIGNED_PAYLOAD
    if not declared:
        # The payload hash is the body's: the signature is known once it is read.
        check_hash(environ, signed_with)
        return
    signed_with(declared)
    if _HEX_SHA256.match(declared):
        check_hash(environ, lambda digest: _payload_matches(digest, declared))
    elif declared == STREAMING_SIGNED and signature.service == SERVICE_NAME:
        scope = f"{timestamp[:8]}/{signature.region}/{signature.service}/aws4_request"
        key = signing_key(credentials.secret_key, scope)
        decode_aws_chunked(environ, ChunkSigner(key, timestamp, scope, signature.signature))


def _payload_matches(digest: str, declared: str) -> None:
    if digest != declared.lower():
        raise AuthError("payload_hash", "The body does not match its x-amz-content-sha256.")


def signing_key(secret_key: str, scope: str) -> bytes:
    """SigV4's signing key for a credential scope ``date/region/service/aws4_request``."""
    key = f"AWS4{secret_key}".encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _v4_signature(
    method: str, url: str, signature: Signature, credentials: Credentials,
    query: list[tuple[str, str]], headers: HTTPHeaders, timestamp: str, payload_hash: str,
) -> str:
    signer_class = _DeclaredS3SigV4 if signature.service == "s3" else _DeclaredSigV4
    signer = signer_class(
        BotocoreCredentials(credentials.access_key, credentials.secret_key),
        signature.service, signature.region,
    )
    signer.signed = signature.signed_headers
    signer.payload_hash = payload_hash
    request = AWSRequest(method=method, url=url, headers=headers)
    request.params = query
    request.context["timestamp"] = timestamp
    string_to_sign = signer.string_to_sign(request, signer.canonical_request(request))
    return str(signer.signature(string_to_sign, request))


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
