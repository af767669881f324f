"""The DICOMweb proxy: the viewer's reads, signed with SigV4 and sent to the
one data store chosen. The browser never holds AWS credentials.

``GET /dicomweb/{rest}`` goes to ``{endpoint}/datastore/{datastoreId}/{rest}``
when ``rest`` is one of HealthImaging's DICOMweb reads (:data:`READS`: the
six QIDO-RS searches and five WADO-RS retrieves); any other path, and any
other method, is refused before anything is sent, so the page can make no
other AWS call, nor reach another data store. ``/dicomweb/imagesets/{id}/…``
reads one image set, primary or not (HealthImaging's ``?imageSetId=``).

Each request is signed as it leaves (config.sigv4: botocore's ``SigV4Auth``, signing name
``medical-imaging``, credentials from the standard chain, refreshed when
they expire); the query is re-encoded the way SigV4 canonicalises it, so
what is signed is what is sent. Answers stream back as they come. 429 and
5xx are tried again a few times (HealthImaging's WADO-RS rate is 50 per
second, and a viewer opening a study asks for many frames at once). A frame
asked for as HTJ2K that is stored otherwise (406) is asked for again
uncompressed: the part's ``transfer-syntax`` tells OHIF which it got.

Its log lines name the operation, the path and the status, never the query:
QIDO queries carry patient names and IDs.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any
from urllib.parse import quote
from wsgiref.types import StartResponse, WSGIEnvironment

import urllib3
from werkzeug.wrappers import Request, Response

from config.sigv4 import signature_headers
from tasks.backoff import exponential, jittered

log = logging.getLogger("dicom_import.viewer")

PREFIX = "/dicomweb"
# /dicomweb/imagesets/{imageSetId}/{rest}: one image set, primary or not.
IMAGE_SETS = "imagesets"
IMAGE_SET_PARAMETER = "imageSetId"
HTJ2K_FRAMES = "multipart/related; type=image/jphc; transfer-syntax=1.2.840.10008.1.2.4.202"
UNCOMPRESSED_FRAMES = ("multipart/related; type=application/octet-stream; "
                       "transfer-syntax=1.2.840.10008.1.2.1")

_UID = r"[0-9]+(?:\.[0-9]+)*"
_INSTANCE = rf"studies/{_UID}/series/{_UID}/instances/{_UID}"
# HealthImaging's DICOMweb reads, by its operation names: nothing else passes.
READS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (operation, re.compile(pattern)) for operation, pattern in (
        ("SearchDICOMStudies", "studies"),
        ("SearchDICOMSeries", "series"),
        ("SearchDICOMInstances", "instances"),
        ("SearchDICOMSeries", rf"studies/{_UID}/series"),
        ("SearchDICOMInstances", rf"studies/{_UID}/instances"),
        ("SearchDICOMInstances", rf"studies/{_UID}/series/{_UID}/instances"),
        ("GetDICOMSeriesMetadata", rf"studies/{_UID}/series/{_UID}/metadata"),
        ("GetDICOMInstance", _INSTANCE),
        ("GetDICOMInstanceMetadata", rf"{_INSTANCE}/metadata"),
        ("GetDICOMInstanceFrames", rf"{_INSTANCE}/frames/[1-9][0-9]*(?:,[1-9][0-9]*)*"),
        ("GetDICOMBulkdata", rf"{_INSTANCE}/bulkdata/[A-Za-z0-9_.~-]+"),
    )
)
_IMAGE_SET_ID = re.compile(r"[0-9a-f]{32}")
_MAX_UID_LENGTH = 64
_UID_LEVELS = frozenset({"studies", "series", "instances"})
# Passed back to the browser; anything else (CORS headers, AWS request IDs,
# cookies) stays here.
_ANSWER_HEADERS = ("Content-Type", "Content-Length", "ETag", "Last-Modified")
_RETRIED = frozenset({429, 500, 502, 503, 504})
_ATTEMPTS = 4
_FIRST_DELAY_SECONDS = 0.2
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Upstream:
    """Where the reads go: an endpoint (``https://dicom-medical-imaging.<region>
    .amazonaws.com``, or the local service) and one data store in it."""

    endpoint: str
    datastore_id: str
    region: str

    @property
    def datastore_root(self) -> str:
        return f"{self.endpoint.rstrip('/')}/datastore/{self.datastore_id}"


@dataclass(frozen=True)
class Read:
    """A request the proxy will forward: which operation, what to ask."""

    operation: str
    rest: str
    query: list[tuple[str, str]]


def read_for(path: str, query: list[tuple[str, str]]) -> Read | None:
    """The DICOMweb read that ``path`` (under :data:`PREFIX`) asks for, or None
    when it is none of :data:`READS` (or names a UID longer than DICOM allows)."""
    if not path.startswith(PREFIX + "/"):
        return None
    rest = path.removeprefix(PREFIX + "/")
    asked = [value for key, value in query if key == IMAGE_SET_PARAMETER]
    image_set = asked[-1] if asked else None
    if rest.startswith(IMAGE_SETS + "/"):
        image_set, _, rest = rest.removeprefix(IMAGE_SETS + "/").partition("/")
    operation = next((op for op, pattern in READS if pattern.fullmatch(rest)), None)
    segments = rest.split("/")
    if operation is None or any(
        len(uid) > _MAX_UID_LENGTH for level, uid in pairwise(segments)
        if level in _UID_LEVELS
    ):
        return None
    given = [(key, value) for key, value in query if key != IMAGE_SET_PARAMETER]
    if image_set is not None:
        if not _IMAGE_SET_ID.fullmatch(image_set):
            return None
        given.append((IMAGE_SET_PARAMETER, image_set))
    return Read(operation, rest, given)


def canonical_query(pairs: list[tuple[str, str]]) -> str:
    """The query as SigV4 encodes it (RFC 3986 unreserved characters kept):
    sent this way, the signature botocore computes is the one AWS checks."""
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs)


class DicomWebProxy:
    """The WSGI app under :data:`PREFIX`."""

    def __init__(self, upstream: Upstream, credentials: Callable[[], Any]) -> None:
        """``credentials`` gives botocore credentials for each request (a
        boto3 session's ``get_credentials().get_frozen_credentials``)."""
        self.upstream = upstream
        self.credentials = credentials
        # A bounded pool: at most this many reads in flight to HealthImaging.
        self.pool = urllib3.PoolManager(maxsize=16, block=True, retries=False,
                                        timeout=urllib3.Timeout(connect=10, read=120))

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        if request.method != "GET":
            response = _refusal(405, "The viewer's proxy only reads (GET).", {"Allow": "GET"})
        else:
            read = read_for(request.path, list(request.args.items(multi=True)))
            if read is None:
                log.warning("Refused %s %s: not a DICOMweb read", request.method, request.path)
                response = _refusal(403, "Not a DICOMweb read of this data store.")
            else:
                response = self._forward(read, request)
        return response(environ, start_response)

    def _forward(self, read: Read, request: Request) -> Response:
        url = f"{self.upstream.datastore_root}/{read.rest}"
        if read.query:
            url += "?" + canonical_query(read.query)
        accept = request.headers.get("Accept")
        try:
            answer = self._send(url, accept)
            if answer.status == 406 and read.operation == "GetDICOMInstanceFrames" \
                    and "image/jphc" in (accept or ""):
                _done_with(answer)
                answer = self._send(url, UNCOMPRESSED_FRAMES)
        except urllib3.exceptions.HTTPError as error:
            log.error("%s %s: HealthImaging could not be reached (%s)", read.operation,
                      request.path, type(error).__name__)
            return _refusal(502, "HealthImaging could not be reached.")
        if answer.status >= 400 and answer.status not in (404, 406):
            log.warning("%s %s: HealthImaging answered %d %s", read.operation, request.path,
                        answer.status, answer.headers.get("x-amzn-ErrorType", ""))
        else:
            log.info("%s %s: %d", read.operation, request.path, answer.status)
        headers = {name: answer.headers[name] for name in _ANSWER_HEADERS if name in answer.headers}
        # Patient data: not to be kept in the browser's disk cache.
        headers["Cache-Control"] = "no-store"
        return Response(_body(answer), status=answer.status, headers=headers,
                        direct_passthrough=True)

    def _send(self, url: str, accept: str | None) -> urllib3.BaseHTTPResponse:
        """One read, signed afresh for each attempt; 429 and 5xx tried again
        with jittered exponential backoff."""
        attempt = 1
        while True:
            headers = {"Accept": accept} if accept else {}
            headers.update(signature_headers(self.credentials(), self.upstream.region, "GET",
                                             url, headers))
            answer = self.pool.urlopen("GET", url, headers=headers,
                                       preload_content=False, redirect=False)
            if answer.status not in _RETRIED or attempt == _ATTEMPTS:
                return answer
            _done_with(answer)
            time.sleep(jittered(exponential(attempt, _FIRST_DELAY_SECONDS, 5.0)))
            attempt += 1


def _body(answer: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    try:
        yield from answer.stream(_CHUNK, decode_content=False)
    finally:
        answer.release_conn()


def _done_with(answer: urllib3.BaseHTTPResponse) -> None:
    """Its body read to the end, so that its connection can serve the next request."""
    answer.drain_conn()
    answer.release_conn()


def _refusal(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return Response(text + "\n", status=status, mimetype="text/plain", headers=headers)
