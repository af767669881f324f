"""Where requests may come from: the names the service answers to, and the
web pages (CORS origins) allowed to read its answers.

A page open in the developer's browser must not reach staged patient data.
Reading a cross-origin answer takes CORS headers, which are only sent for
origins given with ``--cors`` (moto's S3 would echo any ``Origin``). A page
could still get around CORS by DNS rebinding, making its own name resolve
to this machine; the ``Host`` it then sends is its own name, so only the
address the service listens on (and, on loopback, ``localhost``'s other
spellings) is accepted.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from werkzeug.wrappers import Response

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
_WILDCARDS = {"", "0.0.0.0", "::"}
_PREFLIGHT_METHODS = "GET, HEAD, PUT, POST, DELETE"
# What a page needs to read from S3 and medical-imaging answers (e.g. the
# ETag of an uploaded part, the error type).
_EXPOSED = (
    "ETag, Content-Length, Content-Range, x-amz-request-id, x-amz-version-id, "
    "x-amzn-RequestId, x-amzn-ErrorType"
)


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class OriginPolicy:
    def __init__(self, bound_host: str, port: int, cors_origins: Iterable[str] = ()) -> None:
        self.bound_host = bound_host.strip("[]").lower()
        self.port = port
        self.cors_origins = frozenset(origin.rstrip("/") for origin in cors_origins)
        self._wildcard = self.bound_host in _WILDCARDS
        self._machine_names = (
            {socket.gethostname().lower(), socket.getfqdn().lower()} if self._wildcard else set()
        )

    def host_allowed(self, environ: dict[str, Any]) -> bool:
        """The ``Host`` names this service: its address, a loopback name when
        it listens on loopback; when it listens on every interface, also an IP
        address (a rebinding page sends a name, never an IP) or this machine's
        name. With this service's port or with none (dicomweb-client sends the
        name alone): what keeps a rebinding page out is the name its browser
        sends, its own, never one of these."""
        try:
            split = urlsplit("//" + environ.get("HTTP_HOST", ""))
            name, port = (split.hostname or ""), split.port
        except ValueError:
            return False
        if not name or port not in (None, self.port):
            return False
        if name == self.bound_host:
            return True
        if (self._wildcard or is_loopback(self.bound_host)) and is_loopback(name):
            return True
        return self._wildcard and (_is_ip(name) or name in self._machine_names)

    def _allowed_origin(self, environ: dict[str, Any]) -> str | None:
        origin = environ.get("HTTP_ORIGIN", "")
        return origin if origin in self.cors_origins else None

    def preflight(self, environ: dict[str, Any]) -> Response | None:
        """The answer to a CORS preflight from an allowed origin; None for
        anything else (a preflight from another origin is then refused like
        any unsigned request, without CORS headers). Sent as is, not through
        ``with_cors``."""
        if environ.get("REQUEST_METHOD") != "OPTIONS" or (
            "HTTP_ACCESS_CONTROL_REQUEST_METHOD" not in environ
        ):
            return None
        origin = self._allowed_origin(environ)
        if origin is None:
            return None
        headers = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": _PREFLIGHT_METHODS,
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        }
        requested = environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS")
        if requested:
            headers["Access-Control-Allow-Headers"] = requested
        return Response(status=200, headers=headers)

    def with_cors(
        self, environ: dict[str, Any], start_response: Callable[..., Any], admin: bool = False
    ) -> Callable[..., Any]:
        """``start_response`` that drops every CORS header the application
        set (moto's allow all origins) and adds ours for an allowed origin.
        The admin route never gets any."""
        origin = None if admin else self._allowed_origin(environ)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            kept = [
                (name, value) for name, value in headers
                if not name.lower().startswith("access-control-")
                and not (name.lower() == "vary" and value.lower() == "origin")
            ]
            if origin is not None:
                kept += [
                    ("Access-Control-Allow-Origin", origin),
                    ("Access-Control-Expose-Headers", _EXPOSED),
                    ("Vary", "Origin"),
                ]
            return start_response(status, kept, exc_info)

        return start
