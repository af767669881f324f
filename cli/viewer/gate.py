"""Who gets in: only the browser that opened the URL ``dicom-import view``
printed, asking for this server by its own address.

The URL carries a random token (as Jupyter's does). Opened, it becomes a
cookie (``HttpOnly``: no script reads it; ``SameSite=Strict``: no other
site's page sends it) and a redirect takes the token out of the address
bar. Every other request without the cookie is refused, so another local
user or a page open in the same browser gets nothing, not even OHIF's
files. The ``Host`` must be the server's own ``host:port``: a page that
makes its own name resolve to 127.0.0.1 (DNS rebinding) sends its name, and
is refused before the cookie is even looked at. No answer carries CORS
headers, so no other origin reads one.

The cookie's name has the port in it: cookies are per host, not per port,
and two viewers on 127.0.0.1 must not overwrite each other's.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlencode, urlsplit
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from werkzeug.wrappers import Request, Response

TOKEN_PARAMETER = "token"
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
_WILDCARDS = ("0.0.0.0", "::", "")
# On every answer: no framing by other sites, no token or path in a Referer,
# no content sniffing.
_ALWAYS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def url_host(host: str) -> str:
    """``host`` as it is written in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if _ip(host) is not None and ":" in host else host


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


class HostCheck:
    """The ``Host`` values that name this server: ``host:port`` as bound (and
    the other loopback spellings when on loopback); when bound to every
    interface, an IP address (a rebinding page sends a name) or this
    machine's name."""

    def __init__(self, host: str, port: int) -> None:
        self.port = port
        self.wildcard = host in _WILDCARDS
        names = {host.strip("[]").lower()}
        address = _ip(host)
        if host == "localhost" or (address is not None and address.is_loopback):
            names.update(_LOOPBACK_NAMES)
        if self.wildcard:
            names.update({socket.gethostname().lower(), socket.getfqdn().lower()})
        self.names = frozenset(names)

    def allows(self, host_header: str) -> bool:
        try:
            split = urlsplit("//" + host_header)
            name, port = split.hostname or "", split.port
        except ValueError:
            return False
        if port != self.port or not name or split.username is not None:
            return False
        return name in self.names or (self.wildcard and _ip(name) is not None)


class Gate:
    """WSGI middleware in front of the whole viewer."""

    def __init__(self, app: WSGIApplication, host: str, port: int, token: str) -> None:
        self.app = app
        self.hosts = HostCheck(host, port)
        self.token = token
        self.cookie = f"dicom-import-viewer-{port}"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        response = self._refusal_or_entry(request)
        if response is not None:
            return response(environ, start_response)

        def with_headers(status: str, headers: list[tuple[str, str]], *rest: object) -> object:
            kept = [(k, v) for k, v in headers if not k.lower().startswith("access-control-")]
            return start_response(status, kept + list(_ALWAYS.items()), *rest)  # type: ignore[arg-type]

        return self.app(environ, with_headers)  # type: ignore[arg-type]

    def _refusal_or_entry(self, request: Request) -> Response | None:
        """None lets the request through; otherwise the answer it gets."""
        if not self.hosts.allows(request.headers.get("Host", "")):
            return _answer(403, "This is not this viewer's address: open the URL "
                           "`dicom-import view` printed.")
        given = request.args.get(TOKEN_PARAMETER)
        if given is not None:
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return _answer(401, "That token is not this viewer's: open the URL "
                               "`dicom-import view` printed.")
            return self._enter(request)
        cookie = request.cookies.get(self.cookie)
        if cookie is None or not hmac.compare_digest(cookie.encode(), self.token.encode()):
            return _answer(401, "This viewer opens with the URL `dicom-import view` printed "
                           "(it carries a token).")
        return None

    def _enter(self, request: Request) -> Response:
        """The cookie, and the same address without the token."""
        rest = [(k, v) for k, v in request.args.items(multi=True) if k != TOKEN_PARAMETER]
        location = request.path + (f"?{urlencode(rest)}" if rest else "")
        response = _answer(303, "In.", {"Location": location})
        response.set_cookie(self.cookie, self.token, httponly=True, samesite="Strict", path="/")
        return response


def _answer(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    response = Response(text + "\n", status=status, mimetype="text/plain", headers=headers)
    response.headers.update(_ALWAYS)
    response.headers["Cache-Control"] = "no-store"
    return response
