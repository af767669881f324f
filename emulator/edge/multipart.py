"""A STOW-RS request body, spooled to files as it arrives: one file per
DICOM instance, so that a request of up to a gigabyte never sits in memory.

The body is either one ``application/dicom`` instance or a
``multipart/related`` message (RFC 2387, with RFC 2046's delimiter rules)
whose parts are ``application/dicom``. Clients write the media type's
parameters quoted or not (``type="application/dicom"`` and
``type=application/dicom`` both occur); both are read alike. The multipart
body is split incrementally: only the bytes that may still be the start of
a delimiter are held between reads.

Choices where the standard leaves room:

* A part without a Content-Type has the root type (the ``type`` parameter,
  RFC 2387), or ``application/dicom`` when that is missing too.
* A part of another type is kept as a failed instance of its own (its bytes
  are not read further), so the other parts still get stored.
* Text before the first delimiter and after the last (preamble, epilogue)
  is ignored, as RFC 2046 says; a body without a closing delimiter is bad
  syntax.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from email.utils import collapse_rfc2231_value
from pathlib import Path
from typing import BinaryIO

from emulator.edge.quoted_values import quoted

DICOM = "application/dicom"
MULTIPART = "multipart/related"
# Part headers are a few short lines; more than this is not a STOW-RS part.
MAX_PART_HEADER_BYTES = 16 * 1024
# Transport padding allowed after a delimiter, before its line break.
_MAX_PADDING = 1024


class MalformedBody(Exception):
    """The body is not the multipart message its Content-Type announces."""


class UnsupportedMediaType(Exception):
    """The request's Content-Type is not one STOW-RS takes."""


@dataclass
class Part:
    """One instance of the request: its file, or None when its media type is
    not DICOM (``media_type`` then says which it was)."""

    number: int
    media_type: str
    path: Path | None = None
    size: int = 0


def body_kind(content_type: str | None) -> tuple[str, bytes | None]:
    """(root type, boundary) of a STOW-RS body; no boundary for a single
    instance.

    Raises:
        UnsupportedMediaType: neither a single DICOM instance nor multipart
            DICOM.
        MalformedBody: multipart without a usable boundary.
    """
    media_type, options = media_type_of(content_type or "")
    if media_type == DICOM:
        return DICOM, None
    if media_type != MULTIPART:
        raise UnsupportedMediaType(
            f"Content-Type {quoted(content_type or '') or '(none)'} is not {DICOM} or {MULTIPART}"
        )
    root_type = (options.get("type") or DICOM).lower()
    if root_type != DICOM:
        raise UnsupportedMediaType(f"multipart/related of type {root_type} is not of {DICOM}")
    boundary = options.get("boundary", "")
    if not 1 <= len(boundary) <= 70 or not boundary.isascii():  # RFC 2046 §5.1.1
        raise MalformedBody("multipart/related needs a boundary of 1 to 70 ASCII characters")
    return root_type, boundary.encode("latin-1")


def media_type_of(header: str) -> tuple[str, dict[str, str]]:
    """The media type (lower case) and parameters of a Content-Type value,
    quoted or not: ``type=application/dicom`` is common, though RFC 2045
    wants the slash quoted, and werkzeug's parser stops at it. An empty or
    malformed value reads as ``text/plain``, as RFC 2045 says."""
    message = Message()
    message["Content-Type"] = header
    options = {
        name.lower(): collapse_rfc2231_value(value)
        for name, value in message.get_params([])[1:]
    }
    return message.get_content_type(), options


class SinglePartSpooler:
    """A body that is one instance: it goes to one file as it comes."""

    def __init__(self, folder: Path) -> None:
        path = folder / "part-000001.dcm"
        self._part = Part(1, DICOM, path)
        self._file = path.open("wb")

    def feed(self, data: bytes) -> None:
        self._file.write(data)
        self._part.size += len(data)

    def finish(self) -> list[Part]:
        self._file.close()
        return [self._part]

    def close(self) -> None:
        self._file.close()


class MultipartSpooler:
    """Splits a multipart body into its parts' files as it arrives.

    Feed the body in pieces of any size with ``feed``, then ``finish``;
    ``close`` releases the open file whatever happened.
    """

    def __init__(self, boundary: bytes, root_type: str, folder: Path) -> None:
        # A delimiter is CRLF "--" boundary; the body's first one may lack
        # the CRLF, so one is put in front of the body.
        self._delimiter = b"\r\n--" + boundary
        self._root_type = root_type
        self._folder = folder
        self._buffer = bytearray(b"\r\n")
        self._state = self._preamble
        self._parts: list[Part] = []
        self._file: BinaryIO | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data
        # Each state consumes what it can and says whether to go on.
        while self._state():
            pass

    def finish(self) -> list[Part]:
        if self._state != self._epilogue:
            raise MalformedBody("The multipart body ends before its closing delimiter")
        if not self._parts:
            raise MalformedBody("The multipart body holds no part")
        return self._parts

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- states: each returns True when it moved on and may run again --------
    def _preamble(self) -> bool:
        return self._up_to_delimiter(keep=False)

    def _after_delimiter(self) -> bool:
        """A delimiter is followed by "--" (the last one) or by padding and a
        line break (then the part's headers)."""
        if len(self._buffer) < 2:
            return False
        if self._buffer.startswith(b"--"):
            self._state = self._epilogue
            self._buffer.clear()
            return False
        line_end = self._buffer.find(b"\r\n")
        if line_end < 0:
            if len(self._buffer) > _MAX_PADDING:
                raise MalformedBody("A multipart delimiter is not followed by a line break")
            return False
        if self._buffer[:line_end].strip(b" \t"):
            raise MalformedBody("A multipart delimiter is followed by text on its line")
        # The line break stays: an empty header block then reads as CRLF CRLF.
        del self._buffer[:line_end]
        self._state = self._headers
        return True

    def _headers(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_PART_HEADER_BYTES:
                raise MalformedBody(
                    f"A part's headers run over {MAX_PART_HEADER_BYTES} bytes"
                )
            return False
        media_type = self._part_type(bytes(self._buffer[2:end]))
        del self._buffer[: end + 4]
        part = Part(len(self._parts) + 1, media_type)
        if media_type == DICOM:
            part.path = self._folder / f"part-{part.number:06d}.dcm"
            self._file = part.path.open("wb")
        self._parts.append(part)
        self._state = self._body
        return True

    def _body(self) -> bool:
        return self._up_to_delimiter(keep=True)

    def _epilogue(self) -> bool:
        self._buffer.clear()
        return False

    # -- helpers ---------------------------------------------------------------
    def _up_to_delimiter(self, *, keep: bool) -> bool:
        """Pass on (to the current part's file, when ``keep``) the bytes before
        the next delimiter; all but the tail that could start one when none is
        there yet."""
        found = self._buffer.find(self._delimiter)
        end = found if found >= 0 else max(0, len(self._buffer) - len(self._delimiter) + 1)
        if keep:
            self._keep(self._buffer[:end])
        del self._buffer[:end]
        if found < 0:
            return False
        del self._buffer[: len(self._delimiter)]
        if keep:
            self.close()
        self._state = self._after_delimiter
        return True

    def _keep(self, data: bytearray) -> None:
        part = self._parts[-1]
        part.size += len(data)
        if self._file is not None:
            self._file.write(data)

    def _part_type(self, block: bytes) -> str:
        for line in block.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep and name.strip().lower() == b"content-type":
                return media_type_of(value.decode("latin-1"))[0]
        return self._root_type
