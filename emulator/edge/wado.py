"""WADO-RS on the wire: what an Accept header asks for, and multipart bodies.

HealthImaging's negotiation (docs/dicomweb.md): no transfer syntax means
Explicit VR Little Endian, decoded from storage; ``transfer-syntax=*`` means
as stored; the stored syntax by its UID (HTJ2K as ``type="image/jphc";
transfer-syntax=1.2.840.10008.1.2.4.202``, JPEG 2000 lossless as
``image/jp2`` with ``.4.90``); anything else is 406. Frames asked
for as ``application/octet-stream`` are always native, even with
``transfer-syntax=*``, as AWS answers them. A quoted ``transfer-syntax``
value is refused with 400, as AWS was seen to refuse it.

Media ranges are tried in the order of their ``q`` (then as written); an
Accept header naming none of these types is 406.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

from werkzeug.wrappers import Response

from emulator.state.exceptions import BadRequestException, NotAcceptableException

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
OCTET_STREAM = "application/octet-stream"
DICOM = "application/dicom"
ANY = "*/*"
_ANY_TYPES = frozenset({ANY, "*"})
JSON_TYPES = frozenset({"application/dicom+json", "application/json", ANY, "application/*"})

# The media type of a frame in each transfer syntax (PS3.18 Table 8.7.3-4).
FRAME_MEDIA_TYPES = {
    EXPLICIT_VR_LITTLE_ENDIAN: OCTET_STREAM,
    "1.2.840.10008.1.2": OCTET_STREAM,
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    **dict.fromkeys(("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                     "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"), "image/jpeg"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"), "image/jls"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"), "image/jp2"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"), "image/jpx"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                     "1.2.840.10008.1.2.4.203"), "image/jphc"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"), "video/mpeg2"),
    **dict.fromkeys((f"1.2.840.10008.1.2.4.{n}" for n in range(102, 107)), "video/mp4"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"), "video/H265"),
}


@dataclass(frozen=True)
class MediaRange:
    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


@dataclass(frozen=True)
class Choice:
    """What to answer with: native or stored data, as which part type, and
    whether in a multipart body."""

    syntax: str
    native: bool
    part_type: str
    multipart: bool


def media_ranges(header: str | None) -> list[MediaRange]:
    """The Accept header's media ranges, most wanted first; ``*/*`` without
    one."""
    if not header or not header.strip():
        return [MediaRange(ANY)]
    ranges = []
    for raw in _split(header, ","):
        parts = _split(raw, ";")
        if not parts or not parts[0].strip():
            continue
        params: dict[str, str] = {}
        for part in parts[1:]:
            name, _, value = part.partition("=")
            name, value = name.strip().lower(), value.strip()
            if name == "transfer-syntax" and value.startswith('"'):
                raise BadRequestException(
                    "The transfer-syntax parameter must not be quoted: "
                    f"transfer-syntax={value.strip(chr(34))}")
            params[name] = value.strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            ranges.append(MediaRange(parts[0].strip().lower(), params, q))
    return sorted(ranges, key=lambda r: -r.q)  # sorted() is stable


def _split(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double quotes."""
    return re.findall(rf'(?:[^{separator}"]|"[^"]*")+', text)


def choose_instance(header: str | None, stored: str) -> Choice:
    """GetDICOMInstance: one DICOM file, in a multipart body when the
    client asks for ``multipart/related`` (dicomweb-client does), else
    alone, as AWS documents it."""
    for wanted in media_ranges(header):
        multipart = wanted.media_type == "multipart/related"
        part = wanted.params.get("type", DICOM) if multipart else wanted.media_type
        if part not in (DICOM, ANY, "application/*"):
            continue
        syntax = _dicom_syntax(wanted.params.get("transfer-syntax"), stored)
        if syntax is not None:
            return Choice(syntax, syntax == EXPLICIT_VR_LITTLE_ENDIAN, DICOM, multipart)
    raise NotAcceptableException(
        f"The instance is stored as {stored}: it is given as {EXPLICIT_VR_LITTLE_ENDIAN} "
        f"(the default) or as stored (transfer-syntax=* or {stored})")


def _dicom_syntax(requested: str | None, stored: str) -> str | None:
    if requested in (None, "", EXPLICIT_VR_LITTLE_ENDIAN):
        return EXPLICIT_VR_LITTLE_ENDIAN
    if requested in ("*", stored):
        return stored
    return None


def choose_frames(header: str | None, stored: str) -> Choice:
    """GetDICOMInstanceFrames: always a multipart body, one part per frame."""
    stored_type = FRAME_MEDIA_TYPES.get(stored, OCTET_STREAM)
    native = Choice(EXPLICIT_VR_LITTLE_ENDIAN, True, OCTET_STREAM, True)
    as_stored = Choice(stored, False, stored_type, True)
    for wanted in media_ranges(header):
        if wanted.media_type == "multipart/related":
            part = wanted.params.get("type", OCTET_STREAM)
        else:
            part = wanted.media_type
        requested = wanted.params.get("transfer-syntax")
        if part == OCTET_STREAM and requested in (None, "*", EXPLICIT_VR_LITTLE_ENDIAN):
            return native
        if part in _ANY_TYPES:
            if requested in (None, EXPLICIT_VR_LITTLE_ENDIAN):
                return native
            if requested in ("*", stored):
                return as_stored
        elif part == stored_type and requested in ("*", stored):
            return as_stored
    raise NotAcceptableException(
        f"The frames are stored as {stored} ({stored_type}): they are given as "
        f"{OCTET_STREAM} ({EXPLICIT_VR_LITTLE_ENDIAN}, the default) or as "
        f'type="{stored_type}"; transfer-syntax={stored}')


def choose_bulk_data(header: str | None) -> bool:
    """GetDICOMBulkdata: True for a multipart body, False for the bytes alone."""
    for wanted in media_ranges(header):
        if wanted.media_type == "multipart/related" and wanted.params.get(
                "type", OCTET_STREAM) in (OCTET_STREAM, *_ANY_TYPES):
            return True
        if wanted.media_type in (OCTET_STREAM, *_ANY_TYPES, "application/*"):
            return False
    raise NotAcceptableException(f"Bulk data is given as {OCTET_STREAM}")


def check_json_accepted(header: str | None) -> None:
    """Metadata and search results are DICOM JSON only."""
    if not any(r.media_type in JSON_TYPES for r in media_ranges(header)):
        raise NotAcceptableException("Results are given as application/dicom+json only")


def multipart(parts: list[bytes], part_type: str, syntax: str | None) -> Response:
    """A ``multipart/related`` body (PS3.18 8.7.1.3): each part with its
    Content-Type (and transfer syntax), CRLF between them."""
    boundary = uuid.uuid4().hex
    part_header = part_type + (f"; transfer-syntax={syntax}" if syntax else "")
    body = b"".join(
        b"--%s\r\nContent-Type: %s\r\n\r\n%s\r\n" % (boundary.encode(), part_header.encode(), p)
        for p in parts
    ) + b"--%s--\r\n" % boundary.encode()
    content_type = f'multipart/related; type="{part_type}"; boundary={boundary}'
    if syntax:
        content_type += f"; transfer-syntax={syntax}"
    return Response(body, status=200, headers={"Content-Type": content_type})
