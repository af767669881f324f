"""DICOMweb on the local endpoint (behaviour doc §7): the paths under
``/datastore/{datastoreId}/`` that name studies, series or instances. They
share the port with the rest-json API, none of whose routes continues a data
store's path that way, and are signed like it (SigV4, service name
``medical-imaging``).

Every route answers only for a data store that exists (404) and is ACTIVE
(409), in the service's error shape, as the rest-json API does.

The edge has checked what the signature's headers hold before a route
runs. A route that ``streams_body`` (STOW-RS) reads its body itself, within
its own bound and to its end before acting on it: the check of the body ends
with its last read (emulator.edge.signed_body).

Extension point: ``DicomWebApp.add_route(method, template, handler)``, where
``template`` is the path below ``/datastore/{datastoreId}`` with ``{name}``
captures (e.g. ``/studies/{StudyInstanceUID}/series``) and ``handler`` takes
a ``DicomWebCall`` and returns a werkzeug ``Response``.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from werkzeug.wrappers import Request, Response

from emulator.edge.auth_errors import AuthError
from emulator.edge.refusals import refusal
from emulator.edge.request_bodies import buffer_body
from emulator.edge.responses import render_error
from emulator.state.exceptions import HealthImagingError, InternalServerException
from emulator.state.models import HealthImagingBackend
from emulator.state.service_model import SERVICE_NAME

log = logging.getLogger(__name__)

DATASTORE_PREFIX = "/datastore/{datastoreId}"
_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class DicomWebCall:
    """One request to a DICOMweb route: the request and the path's values
    (``datastoreId`` and the template's captures, percent-decoded). A route
    that streams its body reads it to its end before acting on it: the
    signature's check of the body ends there (emulator.edge.signed_body)."""

    request: Request
    params: dict[str, str]


Handler = Callable[[DicomWebCall], Response]


@dataclass(frozen=True)
class _Route:
    method: str
    regex: re.Pattern[str]
    handler: Handler
    streams_body: bool


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", DATASTORE_PREFIX + template)
    regex = "".join(
        f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part)
        for part in parts
    )
    return re.compile(f"^{regex}/?$")


class DicomWebApp:
    """Routes DICOMweb requests to their handlers."""

    def __init__(self, backend: HealthImagingBackend) -> None:
        self.backend = backend
        self._routes: list[_Route] = []

    def add_route(
        self, method: str, template: str, handler: Handler, *, streams_body: bool = False
    ) -> None:
        self._routes.append(_Route(method, _template_regex(template), handler, streams_body))

    def handles(self, environ: dict[str, Any]) -> bool:
        """Whether a route takes this request. Paths no route takes go on to
        the rest-json API, which answers UnknownOperationException for them
        (no DICOMweb path is one of its routes)."""
        return self._match(environ) is not None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self._answer(environ)(environ, start_response)

    def _answer(self, environ: dict[str, Any]) -> Response:
        request_id = str(uuid.uuid4())
        found = self._match(environ)
        assert found is not None, "called only for a request that handles() takes"
        route, params = found
        try:
            if not route.streams_body:
                buffer_body(environ)  # within its cap; the signature's body check ends here
            self.backend.active_datastore(params["datastoreId"])
            response = route.handler(DicomWebCall(Request(environ), params))
        except AuthError as error:
            return refusal(SERVICE_NAME, error.reason, error.message)
        except HealthImagingError as error:
            response = render_error(error, request_id)
        except Exception:
            log.exception("unhandled error in DICOMweb %s", route.regex.pattern)
            response = render_error(
                InternalServerException("The local service failed; see its log."), request_id
            )
        response.headers.setdefault("x-amzn-RequestId", request_id)
        return response

    def _match(self, environ: dict[str, Any]) -> tuple[_Route, dict[str, str]] | None:
        method, path = environ.get("REQUEST_METHOD", ""), _raw_path(environ)
        for route in self._routes:
            if route.method != method:
                continue
            found = route.regex.match(path)
            if found:
                return route, {k: unquote(v) for k, v in found.groupdict().items()}
        return None


def _raw_path(environ: dict[str, Any]) -> str:
    """The path as sent, still percent-encoded (a UID never needs encoding,
    but a client may encode it anyway)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
    return str(raw).split("?", 1)[0]


