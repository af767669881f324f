"""The local service's HTTP server: cheroot's WSGI server, with a few rules of
our own on top.

Why cheroot: it calls the application as soon as a request's headers are in
and hands it the body as a stream (``wsgi.input`` reads the socket, chunked
bodies decoded as they come), so a request can be refused on its headers
alone and a large body never has to sit in memory. Idle kept-alive
connections wait in one selector, not in a thread each; requests are served
by a fixed pool of threads; accepted sockets time out. (waitress, the other
candidate, reads a whole body, to a temporary file past a size, before it
calls the application, and answers ``Expect: 100-continue`` as soon as the
headers are in: a request with a bad signature would still be read whole.)

What this module adds to cheroot, each for a reason:

- **Framing is strict.** ``Content-Length`` must be digits only (Python's
  ``int`` takes ``+5`` and ``1_0``), given once, and never beside
  ``Transfer-Encoding``; ``Host`` and ``Transfer-Encoding`` come once;
  header names carry no spaces. cheroot keeps the last of two
  ``Content-Length`` headers: a client or proxy that reads the first one sees
  the body as a second request. A request that breaks these gets one 400 and
  the connection closes.
- **``Expect: 100-continue`` is answered when the application first reads
  the body**, not when the headers arrive: a request refused on its headers
  (signature, size) is answered before the client sends its body.
- **A body left unread closes the connection.** A client that asked to wait
  for "100 Continue" and was answered without it has sent nothing: the
  connection closes at once. One that sent its body regardless is still
  sending: the rest is read and dropped, for at most ``_DRAIN_SECONDS``, so
  that it reads its answer rather than a reset (closing a socket with unread
  data resets it); nothing of it is kept.
- **Stopping is quick**: the read side of every open connection is shut at
  once (an idle kept-alive one ends; a request in flight can still answer),
  requests in flight get ``_CLOSE_WAIT_SECONDS``, the selector is polled
  every ``poll_seconds``.
- Worker threads are daemons, as werkzeug's were: a service nobody stopped
  does not hold the process open at exit.
- A port that cannot be bound raises ``CannotListen``; cheroot would turn
  the error into a message without its errno.
- ``RAW_URI`` in the environ, the path as sent: moto and our routes match
  percent-encoded paths on it.
- Its messages go to ``logging``, not to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any

from cheroot import server as cheroot_server
from cheroot import wsgi as cheroot_wsgi
from cheroot.workers import threadpool

log = logging.getLogger(__name__)

# Requests served at once. A fixed pool: cheroot does not grow it. Import
# jobs reach S3 through this same port, from their own threads.
REQUEST_THREADS = 32
# Accepted connections waiting for a free thread; past it, 503 and close.
ACCEPT_QUEUE = 128
# Idle kept-alive connections; past it, a response says "Connection: close".
KEEP_ALIVE_CONNECTIONS = 128
# Connections the kernel queues before they are accepted (listen backlog).
LISTEN_BACKLOG = 128
# Request line and headers together (S3 allows 8 KB of user metadata).
MAX_HEADER_BYTES = 64 * 1024
# How long stopping waits for requests in flight.
_CLOSE_WAIT_SECONDS = 5.0
# How long the rest of a body the application did not read is read and
# dropped before the connection closes under a client still sending it.
_DRAIN_SECONDS = 10.0
_DRAIN_READ_BYTES = 1 << 20
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class CannotListen(Exception):
    """The address could not be bound; ``error`` is the OSError, errno and all."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        self.host, self.port, self.error = host, port, error
        super().__init__(f"cannot listen on {host}:{port}: {error.strerror}")


class _StrictHeaders(cheroot_server.HeaderReader):  # type: ignore[misc]
    """cheroot's header reader, one per request, that refuses ambiguous framing
    and takes ``Expect: 100-continue`` out of cheroot's hands (it would answer
    at once)."""

    _ONCE = (b"Content-Length", b"Host", b"Transfer-Encoding")

    def __init__(self) -> None:
        self.names: list[bytes] = []
        self.expects_continue = False

    def _transform_key(self, key_name: bytes) -> bytes:
        if key_name != key_name.strip():
            raise ValueError("A header name must not be followed by white space.")
        key: bytes = super()._transform_key(key_name)
        self.names.append(key)
        return key

    def __call__(self, rfile: Any, hdict: dict[bytes, bytes] | None = None) -> Any:
        headers: dict[bytes, bytes] = super().__call__(rfile, hdict)
        for name in self._ONCE:
            if self.names.count(name) > 1:
                raise ValueError(f"More than one {name.decode()} header.")
        length = headers.get(b"Content-Length")
        if length is not None:
            if not length.isdigit():  # bytes.isdigit: ASCII digits only
                raise ValueError("Content-Length must be a number of bytes in digits.")
            if b"Transfer-Encoding" in headers:
                raise ValueError("Content-Length and Transfer-Encoding must not come together.")
        if headers.get(b"Expect", b"").lower() == b"100-continue":
            del headers[b"Expect"]
            self.expects_continue = True
        return headers


class _ContinueOnRead:
    """The connection's reader, which sends "100 Continue" before the first
    read of the body."""

    def __init__(self, rfile: Any, send_continue: Any) -> None:
        self._rfile = rfile
        self._send_continue = send_continue

    def read(self, size: int | None = None) -> bytes:
        self._send_continue()
        data: bytes = self._rfile.read(size)
        return data

    def readline(self, size: int | None = None) -> bytes:
        self._send_continue()
        data: bytes = self._rfile.readline(size)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rfile, name)


class _Request(cheroot_server.HTTPRequest):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_reader = _StrictHeaders()
        self._continue_owed = False

    def read_request_headers(self) -> bool:
        if not super().read_request_headers():
            return False
        if b"Transfer-Encoding" in self.inheaders and self.request_protocol != b"HTTP/1.1":
            self.simple_response("400 Bad Request", "Transfer-Encoding needs HTTP/1.1.")
            return False
        self._continue_owed = self.header_reader.expects_continue
        return True

    def respond(self) -> None:
        if not self._continue_owed:
            super().respond()
        else:
            socket_reader = self.conn.rfile
            self.conn.rfile = _ContinueOnRead(socket_reader, self._send_continue)
            try:
                super().respond()
            finally:
                self.conn.rfile = socket_reader
        if self._body_unread() and not self._continue_owed:
            self._drop_rest_of_body()

    def _drop_rest_of_body(self) -> None:
        """Read what the client is still sending, and drop it, until its end
        or ``_DRAIN_SECONDS``; the connection closes after."""
        deadline = time.monotonic() + _DRAIN_SECONDS
        with contextlib.suppress(OSError, ValueError):  # gone, timed out, bad chunk
            while (left := deadline - time.monotonic()) > 0:
                self.conn.socket.settimeout(left)
                if not self.rfile.read(_DRAIN_READ_BYTES):
                    break

    def _send_continue(self) -> None:
        if self._continue_owed:
            self._continue_owed = False
            if not self.sent_headers:
                self.conn.wfile.write(_CONTINUE)

    def send_headers(self) -> None:
        if self._body_unread():
            self.close_connection = True
        super().send_headers()

    def _body_unread(self) -> bool:
        if isinstance(self.rfile, cheroot_server.KnownLengthRFile):
            return bool(self.rfile.remaining)
        if isinstance(self.rfile, cheroot_server.ChunkedRFile):
            return not self.rfile.closed
        return False

    def simple_response(self, status: str, msg: str = "") -> None:
        """cheroot's error answer (a refused request, a timeout, a crash),
        which always ends the connection: now saying so."""
        self.close_connection = True
        body = msg.encode("iso-8859-1", "replace")
        head = (f"{self.server.protocol} {status}\r\nContent-Length: {len(body)}\r\n"
                "Content-Type: text/plain\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(OSError):  # the client is gone
            self.conn.wfile.write(head.encode("iso-8859-1") + body)


class _Connection(cheroot_server.HTTPConnection):  # type: ignore[misc]
    RequestHandlerClass = _Request

    def __init__(self, server: EdgeServer, sock: socket.socket, *args: Any) -> None:
        super().__init__(server, sock, *args)
        # Accepted sockets inherit it from the listening one on Linux; not
        # everywhere. Without it a response's last write waits ~40 ms.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server.track(self)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.server.untrack(self)


class _Gateway(cheroot_wsgi.Gateway_10):  # type: ignore[misc]
    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        environ["RAW_URI"] = environ["REQUEST_URI"]
        environ["SERVER_NAME"] = self.req.server.host
        return environ


class _DaemonThreads(threadpool.ThreadPool):  # type: ignore[misc]
    def _spawn_worker(self) -> Any:
        worker = threadpool.WorkerThread(self.server)
        worker.name = f"local-healthimaging-{worker.name}"
        worker.daemon = True
        worker.start()
        return worker


class EdgeServer(cheroot_wsgi.Server):  # type: ignore[misc]
    """Bound on construction (the port is known, a taken one said at once);
    ``serve()`` serves until ``stop()``. ``wsgi_app`` may be set after
    construction, before ``serve()``."""

    ConnectionClass = _Connection

    def __init__(self, host: str, port: int, app: Any, idle_timeout: float,
                 poll_seconds: float) -> None:
        super().__init__((host, port), app, request_queue_size=LISTEN_BACKLOG,
                         timeout=idle_timeout, shutdown_timeout=_CLOSE_WAIT_SECONDS)
        self.gateway = _Gateway
        self.requests = _DaemonThreads(
            self, min=REQUEST_THREADS, max=REQUEST_THREADS,
            accepted_queue_size=ACCEPT_QUEUE, accepted_queue_timeout=0,
        )
        self.host = host
        self.expiration_interval = poll_seconds
        self.keep_alive_conn_limit = KEEP_ALIVE_CONNECTIONS
        self.max_request_header_size = MAX_HEADER_BYTES
        self._open: set[_Connection] = set()
        self._open_lock = threading.Lock()
        self._listening = self._bind(host, port)
        self.prepare()

    @property
    def port(self) -> int:
        return int(self.bind_addr[1])

    def _bind(self, host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock: socket.socket = self.prepare_socket((host, port), family, socket.SOCK_STREAM, 0,
                                                  self.nodelay, None)
        try:
            sock.bind((host, port))
        except OSError as error:
            sock.close()
            raise CannotListen(host, port, error) from error
        return sock

    def bind(self, family: int, type: int, proto: int = 0) -> socket.socket:
        """cheroot's ``prepare()`` asks for a socket per address it resolves:
        it gets the one bound in the constructor."""
        self.socket = self._listening
        self.bind_addr = self.resolve_real_bind_addr(self._listening)
        return self._listening

    def track(self, connection: _Connection) -> None:
        with self._open_lock:
            self._open.add(connection)

    def untrack(self, connection: _Connection) -> None:
        with self._open_lock:
            self._open.discard(connection)

    def stop(self) -> None:
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):  # already gone
                connection.socket.shutdown(socket.SHUT_RD)
        super().stop()

    def error_log(self, msg: str = "", level: int = logging.INFO,
                  traceback: bool = False) -> None:
        """A client that went away is routine (debug); a crash is not."""
        if level < logging.ERROR:
            log.debug("%s", msg, exc_info=traceback)
        else:
            log.log(level, "%s", msg, exc_info=traceback)
