"""The local service's HTTP server: werkzeug's threaded server, with
connections kept alive between requests.

werkzeug's development server closes every connection after one response,
because after the application it reads whatever is left on the socket, which
on a kept-alive connection would be the next request. Clients then pay a TCP
connect per request and the server a thread per request: half the time of a
small PutObject here. This handler reads a request's body itself (its
Content-Length is known) and hands the application, and werkzeug's read of
what is left, that body alone; the socket then holds only the next request.
A request whose length is not given (chunked) or is large, or a client that
asks to close, gets werkzeug's behaviour: one request, then close.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import threading
from typing import Any

from moto.moto_server.werkzeug_app import MotoRequestHandler
from werkzeug.serving import ThreadedWSGIServer

log = logging.getLogger(__name__)

# Bodies up to this size are read before the application runs (moto reads
# them whole anyway); larger ones stream, on a connection closed afterwards.
# It is the size of a staged file's single PutObject and of its parts
# (boto3's multipart threshold and part size), so staging keeps its
# connections; a larger body is not held twice (here and in moto), and a
# HealthImaging request over its cap is refused before it is read.
_KEEP_ALIVE_MAX_BODY = 8 << 20


# How long closing the server waits for requests in flight.
_CLOSE_WAIT_SECONDS = 5.0


class RequestHandler(MotoRequestHandler):
    # A response goes out in several writes (headers, body); with Nagle's
    # algorithm the last one waits for the client's delayed ACK, ~40 ms.
    disable_nagle_algorithm = True

    def run_wsgi(self) -> None:
        length = self._body_length()
        if self.close_connection or length is None:
            self.close_connection = True
            super().run_wsgi()
            return
        # http.server already answered "Expect: 100-continue" while parsing
        # the request; werkzeug would send a second "100 Continue".
        del self.headers["Expect"]
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True  # the client left mid-body
            return
        socket_reader = self.rfile
        self.rfile = io.BytesIO(body)
        try:
            super().run_wsgi()
        finally:
            self.rfile = socket_reader

    def _body_length(self) -> int | None:
        """The body's length when it can be read ahead, else None."""
        if self.request_version != "HTTP/1.1" or "Transfer-Encoding" in self.headers:
            return None
        try:
            length = int(self.headers.get("Content-Length", 0))
        except ValueError:
            return None
        return length if 0 <= length <= _KEEP_ALIVE_MAX_BODY else None

    def send_header(self, keyword: str, value: str) -> None:
        """werkzeug adds "Connection: close" to every response; it stands only
        when this connection is closing."""
        if keyword.lower() == "connection" and value.lower() == "close" and (
            not self.close_connection
        ):
            return
        super().send_header(keyword, value)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Request lines go to the debug log, not to stderr: a busy import
        would otherwise drown the service's own messages."""
        log.debug('"%s" %s %s', self.requestline, code, size)


class CannotListen(Exception):
    """The address could not be bound. Not an OSError: werkzeug catches those
    while binding, prints two lines of its own and exits the process."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        self.host, self.port, self.error = host, port, error
        super().__init__(f"cannot listen on {host}:{port}: {error.strerror}")


class KeepAliveServer(ThreadedWSGIServer):
    """Knows its open connections, so that closing the server closes the idle
    kept-alive ones too: otherwise their threads would go on serving a
    stopped service to whichever client still pools them. Closing waits for
    the requests in flight to end (up to ``_CLOSE_WAIT_SECONDS``), so that
    the service's state is not closed under them."""

    def __init__(self, host: str, port: int, app: Any) -> None:
        # Before werkzeug's __init__, which calls server_close() when binding fails.
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Condition()
        self._address = (host, port)
        super().__init__(host, port, app, RequestHandler)

    def server_bind(self) -> None:
        try:
            super().server_bind()
        except OSError as error:
            raise CannotListen(*self._address, error) from error

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self._connections_lock:
            self._connections.discard(request)
            self._connections_lock.notify_all()

    def server_close(self) -> None:
        super().server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already gone
                # The read side only: a request in flight can still answer.
                connection.shutdown(socket.SHUT_RD)
        with self._connections_lock:
            self._connections_lock.wait_for(lambda: not self._connections, _CLOSE_WAIT_SECONDS)
