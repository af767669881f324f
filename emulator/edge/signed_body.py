"""Request bodies checked as they stream, never held whole.

A signature covers the body through its SHA-256. The edge checks everything
the headers hold before any of the body is read (emulator.edge.auth); what
depends on the body is checked by a wrapper put in place of ``wsgi.input``,
as the application reads it, and a mismatch raises ``AuthError`` from the
read that would have handed over the body's last bytes. So the rule for
whoever reads a body: **read it to its end before acting on it.** A route
that streams a large body to disk (STOW-RS) then stores nothing from a
request whose signature fails; one that reads the body whole (the JSON
operations, through ``request_bodies.buffer_body``) gets the error there.

``spool`` reads a checked body through, into a temporary file past 1 MiB,
for applications that are not ours (moto): they then get a body already
known good.

Also here: the ``aws-chunked`` framing of
``x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` (AWS's own STOW-RS
example sends it), decoded as it streams, each chunk's signature checked
when credentials are known.
"""

from __future__ import annotations

import hashlib
import hmac
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emulator.edge.auth_errors import AuthError

# The environ key set when a wrapper checks the body as it is read.
CHECKED_BODY = "emulator.checked_body"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_READ_BYTES = 64 * 1024
_SPOOL_IN_MEMORY = 1 << 20
# "<hex size>;chunk-signature=<64 hex>\r\n": anything longer is not a chunk header.
_MAX_CHUNK_HEADER = 256


def body_length(environ: dict[str, Any]) -> int | None:
    """The declared length; None for a chunked body (read to its end)."""
    if environ.get("wsgi.input_terminated"):
        return None
    return int(environ.get("CONTENT_LENGTH") or 0)


class _Checked:
    """``wsgi.input`` that hands each piece read to ``feed`` and calls
    ``finish`` when the last byte has been read, before returning it."""

    def __init__(self, stream: Any, length: int | None, feed: Callable[[bytes], None],
                 finish: Callable[[], None]) -> None:
        self._stream = stream
        self._remaining = length
        self._feed = feed
        self._finish = finish
        self._finished = False
        if length == 0:
            self._end()

    def _end(self) -> None:
        if not self._finished:
            self._finished = True
            self._finish()

    def read(self, size: int | None = -1) -> bytes:
        return self._take(self._stream.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._take(self._stream.readline, size)

    def _take(self, reader: Callable[[int], bytes], size: int | None) -> bytes:
        if self._finished:
            return b""
        if self._remaining is not None and (size is None or size < 0 or size > self._remaining):
            size = self._remaining
        data = reader(-1 if size is None else size)
        self._feed(data)
        if self._remaining is not None:
            self._remaining -= len(data)
            if self._remaining == 0:
                self._end()
        elif not data:
            self._end()
        return data

    def __iter__(self) -> _Checked:
        return self

    def __next__(self) -> bytes:
        data = self.read(_READ_BYTES)
        if not data:
            raise StopIteration
        return data


def check_hash(environ: dict[str, Any], on_digest: Callable[[str], None]) -> None:
    """Hash the body as it is read; ``on_digest`` gets the hex SHA-256 once
    the last byte is in (and raises AuthError to refuse)."""
    digest = hashlib.sha256()
    environ["wsgi.input"] = _Checked(
        environ["wsgi.input"], body_length(environ), digest.update,
        lambda: on_digest(digest.hexdigest()),
    )
    environ[CHECKED_BODY] = True


@dataclass(frozen=True)
class ChunkSigner:
    """What checking ``aws-chunked`` chunk signatures takes: each chunk's
    string to sign chains the previous signature, starting from the seed
    (the request's own)."""

    signing_key: bytes
    timestamp: str
    scope: str
    seed_signature: str

    def signature(self, previous: str, chunk_sha256: str) -> str:
        to_sign = "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", self.timestamp, self.scope, previous,
                             EMPTY_SHA256, chunk_sha256))
        return hmac.new(self.signing_key, to_sign.encode(), hashlib.sha256).hexdigest()


class _AwsChunked:
    """The decoded body of an ``aws-chunked`` stream:
    ``<hex size>;chunk-signature=<sig>\r\n<data>\r\n`` ... then a chunk of
    size 0. Chunks are streamed, not buffered; a chunk's signature is checked
    once its last byte has been read, before that byte is handed over, and
    the final empty chunk is read with the last byte of data."""

    def __init__(self, stream: Any, decoded_length: int, signer: ChunkSigner | None) -> None:
        self._stream = stream
        self._signer = signer
        self._previous = signer.seed_signature if signer else ""
        self._unread = decoded_length  # decoded bytes not handed over yet
        self._unframed = decoded_length  # decoded bytes no chunk header announced yet
        self._left_in_chunk = 0
        self._chunk_signature = ""
        self._chunk_hash = hashlib.sha256()
        self._done = False
        self._pushed_back = b""  # read ahead by readline

    def read(self, size: int | None = -1) -> bytes:
        if self._pushed_back:
            end = len(self._pushed_back) if size is None or size < 0 else size
            data, self._pushed_back = self._pushed_back[:end], self._pushed_back[end:]
            return data
        return self._decode(size)

    def readline(self, size: int | None = -1) -> bytes:
        line = b""
        while size is None or size < 0 or len(line) < size:
            piece = self.read(_READ_BYTES)
            if not piece:
                break
            line += piece
            newline = line.find(b"\n")
            if newline >= 0:
                line, self._pushed_back = line[:newline + 1], line[newline + 1:] + self._pushed_back
                break
        if size is not None and 0 <= size < len(line):
            line, self._pushed_back = line[:size], line[size:] + self._pushed_back
        return line

    def _decode(self, size: int | None) -> bytes:
        wanted = self._unread if size is None or size < 0 else min(size, self._unread)
        parts: list[bytes] = []
        while wanted > 0:
            if self._left_in_chunk == 0:
                self._open_chunk(final=False)
            data = self._stream.read(min(wanted, self._left_in_chunk, _READ_BYTES))
            if not data:
                raise AuthError("malformed", "The aws-chunked body ended inside a chunk.")
            self._chunk_hash.update(data)
            self._left_in_chunk -= len(data)
            self._unread -= len(data)
            wanted -= len(data)
            if self._left_in_chunk == 0:
                self._close_chunk()
            parts.append(data)
        if self._unread == 0 and not self._done:
            self._open_chunk(final=True)
            self._close_chunk()
            self._done = True
        return b"".join(parts)

    def _open_chunk(self, final: bool) -> None:
        line = self._stream.readline(_MAX_CHUNK_HEADER)
        size_text, _, extension = line.removesuffix(b"\r\n").decode("latin-1").partition(";")
        name, _, signature = extension.partition("=")
        size = int(size_text, 16) if size_text and _is_hex(size_text) else -1
        if not line.endswith(b"\r\n") or size < 0 or (
            self._signer is not None and name != "chunk-signature"
        ):
            raise AuthError("malformed", "An aws-chunked chunk header is malformed.")
        if (size == 0) != final or size > self._unframed:
            raise AuthError("malformed", "The aws-chunked body does not add up to its "
                            "x-amz-decoded-content-length.")
        self._unframed -= size
        self._left_in_chunk = size
        self._chunk_signature = signature.lower()
        self._chunk_hash = hashlib.sha256()

    def _close_chunk(self) -> None:
        if self._stream.read(2) != b"\r\n":
            raise AuthError("malformed", "An aws-chunked chunk does not end with CRLF.")
        if self._signer is not None:
            expected = self._signer.signature(self._previous, self._chunk_hash.hexdigest())
            if not hmac.compare_digest(expected.encode(), self._chunk_signature.encode()):
                raise AuthError("signature", "An aws-chunked chunk signature does not match.")
            self._previous = expected


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def decode_aws_chunked(environ: dict[str, Any], signer: ChunkSigner | None) -> None:
    """Put the decoded body of an ``aws-chunked`` request in ``wsgi.input``,
    with its decoded length; chunk signatures are checked when ``signer`` is
    given. Once per request."""
    if environ.get(CHECKED_BODY):
        return
    declared = environ.get("HTTP_X_AMZ_DECODED_CONTENT_LENGTH", "")
    if not declared.isdigit():
        raise AuthError("malformed", "A STREAMING-AWS4-HMAC-SHA256-PAYLOAD request needs "
                        "x-amz-decoded-content-length.")
    encodings = [e.strip() for e in environ.get("HTTP_CONTENT_ENCODING", "").split(",")]
    if environ.get("CONTENT_LENGTH") == declared and "aws-chunked" not in encodings:
        # AWS's own STOW-RS example (curl --aws-sigv4 with this header)
        # sends the body as it is, which curl cannot frame: framed, a body
        # is always longer than decoded. Its bytes are then unsigned, as
        # with UNSIGNED-PAYLOAD.
        environ[CHECKED_BODY] = True
        return
    environ["wsgi.input"] = _AwsChunked(environ["wsgi.input"], int(declared), signer)
    environ["CONTENT_LENGTH"] = declared
    environ["wsgi.input_terminated"] = False
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    kept = ", ".join(e for e in encodings if e and e.lower() != "aws-chunked")
    if kept:
        environ["HTTP_CONTENT_ENCODING"] = kept
    else:
        environ.pop("HTTP_CONTENT_ENCODING", None)
    environ[CHECKED_BODY] = True


def spool(environ: dict[str, Any]) -> None:
    """Read a checked body to its end, into memory up to 1 MiB and a
    temporary file past it, so that the application gets a body already
    checked (and the check's error comes from here)."""
    source = environ["wsgi.input"]
    copy = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
    size = 0
    while data := source.read(_READ_BYTES):
        copy.write(data)
        size += len(data)
    copy.seek(0)
    environ["wsgi.input"] = copy
    environ["CONTENT_LENGTH"] = str(size)
    environ["wsgi.input_terminated"] = False
    environ.pop("HTTP_TRANSFER_ENCODING", None)
