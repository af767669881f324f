"""Reading a HealthImaging request body within a bound.

The largest body the API models is UpdateImageSetMetadata's: two DICOM
attribute blobs (``removableAttributes``, ``updatableAttributes``) of at most
the model's ``DICOMAttribute`` maximum each, base64-encoded in JSON. A body
over that, plus room for the JSON around them, cannot be a valid request, so
it is refused by its ``Content-Length`` before any of it is read, and a
chunked one is read only up to that cap. JSON is parsed with a depth limit:
no operation nests deeper than a few levels, and a deeply nested body would
otherwise exhaust the parser's recursion (a 500).
"""

from __future__ import annotations

import io
import json
from functools import lru_cache
from typing import Any

from werkzeug.wrappers import Request

from emulator.state.exceptions import ValidationException
from emulator.state.service_model import service_model

# Room for the JSON members around the blobs (keys, quotes, braces).
_ENVELOPE_BYTES = 16 * 1024
# Deeper than any operation's input shape (search filters are the deepest, ~6).
MAX_JSON_DEPTH = 32


class RequestTooLarge(ValidationException):
    """A ValidationException, answered 413 as AWS's front door answers bodies
    over its limit."""

    status = 413

    @property
    def code(self) -> str:
        return "ValidationException"


@lru_cache(maxsize=1)
def max_body_bytes() -> int:
    """The largest body a valid request can have, from the botocore model."""
    blob_max = int(service_model().shape_for("DICOMAttribute").metadata["max"])
    base64_chars = 4 * -(-blob_max // 3)
    return 2 * base64_chars + _ENVELOPE_BYTES


def read_body(request: Request) -> bytes:
    """The body, refused unread when its declared length is over the cap, and
    read no further than the cap when it is chunked."""
    limit = max_body_bytes()
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(declared, limit)
    raw = bytearray()
    while piece := request.stream.read(limit + 1 - len(raw)):
        raw += piece
        if len(raw) > limit:
            raise _too_large(None, limit)
    # Read to its end: a body checked as it streams (its signature) is
    # checked by the read that reaches the end.
    return bytes(raw)


def buffer_body(environ: dict[str, Any]) -> None:
    """Read the body within the cap, before the operation runs (a body whose
    signature is checked as it streams is checked here), and put it back for
    whoever reads it next."""
    body = read_body(Request(environ))
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ["wsgi.input_terminated"] = False
    environ.pop("HTTP_TRANSFER_ENCODING", None)


def parse_json(raw: bytes) -> Any:
    """The body as JSON, nested no deeper than ``MAX_JSON_DEPTH``."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        raise ValidationException("The request body is not valid JSON") from None
    if _depth(body) > MAX_JSON_DEPTH:
        raise _too_deep()
    return body


def _depth(value: Any) -> int:
    """Nesting depth, walked without recursion."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                return depth
            pending.extend((child, depth + 1) for child in item)
    return deepest


def _too_large(declared: int | None, limit: int) -> RequestTooLarge:
    size = f"{declared} bytes" if declared is not None else f"over {limit} bytes"
    return RequestTooLarge(
        f"The request body is {size}; a HealthImaging request body is at most {limit} bytes"
    )


def _too_deep() -> ValidationException:
    return ValidationException(
        f"The request body is nested deeper than {MAX_JSON_DEPTH} levels"
    )
