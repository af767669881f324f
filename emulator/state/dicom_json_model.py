"""Image set metadata values as the DICOM JSON model (PS3.18 Annex F).

The metadata document keys attributes by keyword (private and unknown tags by
8 hex digits, their VR in the instance's ``DICOMVRs``) and keeps values as
plain JSON: strings as written, numbers, arrays, SQ items as objects, binary
values as base64 (behaviour doc §4). DICOMweb answers in the DICOM JSON
model instead: keyed by tag, each element with its VR, ``Value`` an array,
person names as ``{"Alphabetic": ...}``, binary values ``InlineBinary`` or a
``BulkDataURI``. WADO-RS metadata, QIDO-RS results and the Part 10 files
WADO-RS builds (through pydicom's ``Dataset.from_json``) all go through here,
so a value is converted one way only.

Choices where AWS documents nothing:

* A VR the dictionary gives as a choice is resolved from the instance:
  ``US or SS`` is SS when PixelRepresentation is 1, ``OB or OW`` is OW when
  BitsAllocated is over 8; otherwise the first choice.
* IS and DS values are JSON numbers when they read as numbers and stay
  strings otherwise (a malformed value is passed on, not dropped).
* Pixel Data is never part of the JSON: frames are retrieved on their own.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from string import hexdigits
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# A binary value over this many bytes is named by a BulkDataURI in WADO-RS
# metadata instead of being inlined (AWS: "over 1 MB"; taken as 1 MiB).
BULK_DATA_THRESHOLD = 1024 * 1024
PIXEL_DATA_TAG = 0x7FE00010
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")
_NUMBERS = (int, float)

# Given a binary value's attribute path: its BulkDataURI, or None to leave
# the value out.
BulkUri = Callable[[str], str | None]


@lru_cache(maxsize=4096)
def tag_of(key: str) -> int | None:
    """The tag a document key or a query key names: a keyword or 8 hex digits."""
    if len(key) == 8 and all(c in hexdigits for c in key):
        return int(key, 16)
    return tag_for_keyword(key)


def key_of(tag: int) -> str:
    """The key the metadata document uses for ``tag``."""
    return keyword_for_tag(tag) or f"{tag:08X}"


def vr_of(tag: int, vrs: Mapping[str, str], context: Mapping[str, Any]) -> str:
    """The VR of ``tag``: the instance's own record of it, else the dictionary's,
    resolved against ``context`` (the instance's attributes) when it is a
    choice; UN for a tag neither knows."""
    recorded = vrs.get(f"{tag:08X}") if vrs else None
    if recorded:
        return recorded
    vr = _dictionary_vr(tag)
    if " or " not in vr:
        return vr
    choices = vr.split(" or ")
    if "SS" in choices and _number(context.get("PixelRepresentation")) == 1:
        return "SS"
    if "OW" in choices and (_number(context.get("BitsAllocated")) or 0) > 8:
        return "OW"
    return choices[0]


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str:
    try:
        vr: str = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr


def dataset_json(
    attributes: Mapping[str, Any],
    vrs: Mapping[str, str],
    *,
    bulk_uri: BulkUri | None = None,
    context: Mapping[str, Any] | None = None,
    path: str = "",
) -> dict[str, Any]:
    """``attributes`` (document keys and values) as a DICOM JSON object,
    sorted by tag. Without ``bulk_uri`` every binary value is inlined."""
    context = attributes if context is None else context
    elements: dict[str, Any] = {}
    for key, value in attributes.items():
        tag = tag_of(key)
        if tag is None or tag == PIXEL_DATA_TAG:
            continue
        element_path = f"{path}{tag:08X}"
        vr = vr_of(tag, vrs, context)
        element = _element(vr, value, vrs, bulk_uri, context, element_path)
        if element is not None:
            elements[f"{tag:08X}"] = element
    return dict(sorted(elements.items()))


def _element(
    vr: str,
    value: Any,
    vrs: Mapping[str, str],
    bulk_uri: BulkUri | None,
    context: Mapping[str, Any],
    path: str,
) -> dict[str, Any] | None:
    element: dict[str, Any] = {"vr": vr}
    if value is None or value == [] or value == "":
        return element
    if vr == "SQ":
        items = value if isinstance(value, list) else [value]
        element["Value"] = [
            dataset_json(item or {}, vrs, bulk_uri=bulk_uri, context=context,
                         path=f"{path}/{index}/")
            for index, item in enumerate(items)
        ]
    elif vr in BINARY_VRS:
        inline = "".join(value) if isinstance(value, list) else str(value)
        if bulk_uri is not None and binary_size(inline) > BULK_DATA_THRESHOLD:
            uri = bulk_uri(path)
            if uri is None:
                return None
            element["BulkDataURI"] = uri
        else:
            element["InlineBinary"] = inline
    else:
        values = value if isinstance(value, list) else [value]
        element["Value"] = [_scalar(vr, v) for v in values]
    return element


def _scalar(vr: str, value: Any) -> Any:
    if value is None:
        return None
    if vr == "PN":
        if isinstance(value, dict):
            return value
        groups = str(value).split("=")
        names = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False))
        return {group: name for group, name in names.items() if name}
    if vr in ("IS", "DS"):
        return _decimal(value)
    if isinstance(value, _NUMBERS):
        return value
    return str(value)


def _decimal(value: Any) -> Any:
    if isinstance(value, _NUMBERS):
        return value
    text = str(value)
    if _INTEGER.fullmatch(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return text
    return number if number == number and abs(number) != float("inf") else text


def _number(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def binary_size(inline: str) -> int:
    """Bytes of a base64 value, without decoding it."""
    return len(inline) * 3 // 4 - inline[-2:].count("=")


def bulk_data_id(path: str) -> str:
    """The ID of a binary value in its BulkDataURI: stable for the attribute
    path (tags and item numbers), so a URI stays valid across requests."""
    return hashlib.sha256(path.encode()).hexdigest()[:32]


def binary_values(
    attributes: Mapping[str, Any],
    vrs: Mapping[str, str],
    *,
    context: Mapping[str, Any] | None = None,
    path: str = "",
) -> Iterator[tuple[str, bytes]]:
    """(attribute path, bytes) of every binary value, nested ones included,
    with the paths ``dataset_json`` gives ``bulk_uri``."""
    context = attributes if context is None else context
    for key, value in attributes.items():
        tag = tag_of(key)
        if tag is None or tag == PIXEL_DATA_TAG or value is None:
            continue
        vr = vr_of(tag, vrs, context)
        element_path = f"{path}{tag:08X}"
        if vr == "SQ" and isinstance(value, list):
            for index, item in enumerate(value):
                yield from binary_values(item or {}, vrs, context=context,
                                         path=f"{element_path}/{index}/")
        elif vr in BINARY_VRS:
            inline = "".join(value) if isinstance(value, list) else str(value)
            yield element_path, base64.b64decode(inline)
