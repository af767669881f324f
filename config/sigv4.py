"""SigV4 for plain HTTP requests: HealthImaging's DICOMweb operations are in
no SDK, so a client signs them itself, as AWS documents (botocore's
``SigV4Auth`` with the signing name ``medical-imaging``). Credentials come
from the standard chain (variables, profile, role), read again at each
signature so that temporary credentials are refreshed."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import botocore.session
import requests
from botocore.auth import SigV4Auth as BotocoreSigV4
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from requests.adapters import HTTPAdapter

from config.clients import region

SIGNING_NAME = "medical-imaging"
# Headers requests or urllib3 may set or change after signing: left unsigned.
_UNSIGNED = frozenset({"connection", "accept-encoding", "user-agent", "content-length",
                       "transfer-encoding", "expect"})
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class NoCredentials(Exception):
    """The standard chain found no AWS credentials."""


class SigV4(requests.auth.AuthBase):
    """A requests auth that signs each request with botocore's SigV4 signer.

    The payload hash signed is the request's ``X-Amz-Content-SHA256`` when
    it has one (a body streamed from a file, hashed as it was written: it is
    never read here), else the SHA-256 of a bytes body, and the header is
    sent either way, as AWS's own examples do. The Host signed is the one
    the request will carry: the URL's host, with its port unless default.
    """

    def __init__(
        self, credentials: Credentials | None = None, region_name: str | None = None,
        service: str = SIGNING_NAME,
    ) -> None:
        self._fixed = credentials
        self._source: Any = None if credentials else botocore.session.get_session()
        self.region = region_name or region()
        self.service = service

    def _credentials(self) -> Credentials:
        if self._fixed is not None:
            return self._fixed
        found = self._source.get_credentials()
        if found is None:
            raise NoCredentials("no AWS credentials: set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        frozen = found.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if "X-Amz-Content-SHA256" not in request.headers:
            body = request.body
            if body is not None and not isinstance(body, bytes | str):
                raise ValueError("a streamed body needs its X-Amz-Content-SHA256 set")
            data = body.encode() if isinstance(body, str) else body or b""
            request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(data).hexdigest()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _UNSIGNED}
        request.headers.update(signature_headers(
            self._credentials(), self.region, str(request.method), str(request.url), headers,
            self.service))
        return request


def signature_headers(
    credentials: Credentials, region_name: str, method: str, url: str,
    headers: Mapping[str, str | bytes], service: str = SIGNING_NAME,
) -> dict[str, str]:
    """The headers that sign a request of ``headers`` (``Authorization``,
    ``X-Amz-Date``, and the session token's): one signing for every client
    of the project, whatever carries the request."""
    signed = AWSRequest(method=method, url=url, headers=dict(headers))
    BotocoreSigV4(credentials, service, region_name).add_auth(signed)
    return {name: signed.headers[name]
            for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token")
            if name in signed.headers}


def signed_session(connections: int = 10, auth: SigV4 | None = None) -> requests.Session:
    """A session whose requests are signed, keeping up to ``connections``
    connections alive to a host (one per request in flight). No retries of
    its own: its callers decide what may be sent again."""
    session = requests.Session()
    session.auth = auth or SigV4()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=connections, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
