"""The viewer's HTTP server: the gate in front, then the DICOMweb proxy under
``/dicomweb`` and OHIF's files everywhere else, on one origin of its own
(OHIF loads its files from the site root).

werkzeug's threaded server (already a dependency): one user, on loopback,
a thread per connection, so that a study's frames load in parallel. Its
request log is replaced: the proxy logs each read by path, and any other
line the server writes has its query strings cut, since a QIDO query names
patients and the URL a token.
"""

from __future__ import annotations

import logging
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from cli.viewer.gate import TOKEN_PARAMETER, Gate, url_host
from cli.viewer.proxy import PREFIX, DicomWebProxy
from cli.viewer.static import ViewerConfig, ViewerFiles

log = logging.getLogger("dicom_import.viewer")
_QUERY = re.compile(r"\?[^\s\"']*")


def without_queries(text: str) -> str:
    return _QUERY.sub("?…", text)


class _Handler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Not every file: the proxy logs the reads."""

    def log(self, type: str, message: str, *args: Any) -> None:
        level = logging.ERROR if type == "error" else logging.INFO
        log.log(level, "%s", without_queries(message % args if args else message))


class Viewer:
    """The routes behind the gate."""

    def __init__(self, files: ViewerFiles, proxy: DicomWebProxy) -> None:
        self.files = files
        self.proxy = proxy

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        app = self.proxy if path == PREFIX or path.startswith(PREFIX + "/") else self.files
        return app(environ, start_response)


class ViewerServer:
    """Bound at construction (so a port in use is known before anything is
    printed); :meth:`serve_forever` or ``with`` (a thread, for tests) serve."""

    def __init__(self, host: str, port: int, files: Path, config: ViewerConfig,
                 credentials: Callable[[], Any]) -> None:
        self.token = secrets.token_urlsafe(32)
        self.host = host
        # Bound here, not by werkzeug, which exits the process on a port in use.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
            self._socket.listen(128)
        except OSError:
            self._socket.close()
            raise
        self.port: int = self._socket.getsockname()[1]
        app = Gate(Viewer(ViewerFiles(files, config),
                          DicomWebProxy(config.upstream, credentials)),
                   host, self.port, self.token)
        self._server: BaseWSGIServer = make_server(
            host, self.port, app, threaded=True, request_handler=_Handler,
            fd=self._socket.fileno())
        self._thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        """On every interface, by this machine's name (which the gate accepts)."""
        host = socket.gethostname() if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{url_host(host)}:{self.port}"

    @property
    def url(self) -> str:
        """The one URL to open: it lets its browser in."""
        return f"{self.origin}/?{TOKEN_PARAMETER}={self.token}"

    def serve_forever(self) -> None:
        """Until :meth:`stop` (or a KeyboardInterrupt, which ends werkzeug's loop)."""
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._socket.close()

    def stop(self) -> None:
        """Ends :meth:`serve_forever`, from any other thread or a signal handler."""
        threading.Thread(target=self._server.shutdown, daemon=True).start()

    def __enter__(self) -> ViewerServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True,
                                        name="dicom-import-view")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
