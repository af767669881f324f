"""Just enough of a DICOM Part 10 file to validate it, read straight from its bytes.

pydicom builds an element model of the whole header, which costs more than the
rest of validation put together; validation needs a dozen values and where
Pixel Data starts. :func:`read_header` walks the top-level elements over the
bytes already read for the checksum and keeps only the wanted values, a few
times cheaper per file.

It reads the plain cases only: explicit or implicit VR little endian, explicit
VR big endian, deflated, and the encapsulated syntaxes. Anything else (a
missing or unknown transfer syntax, a dataset encoded other than its transfer
syntax says, an unknown VR, a file meta element with another VR than its
own, an element header cut short) raises :class:`UnusualEncoding`, and the
caller reads the file with pydicom (:func:`read_header_with_pydicom`), whose
leniency in those cases is documented. So the fast path never judges a file
differently from pydicom; it only judges the common file sooner. The one
exception: a value that goes past the end of the file raises
:class:`Truncated`, since the import refuses such a file (``import_rules``)
where pydicom would keep what is there.

Neither path recurses per level of nesting: the fast path walks into a
sequence one element at a time, keeping a stack, and only as far as it must
to count levels (a sequence too short to nest past the limit is passed
whole); pydicom's recursion is cut short and counted as nesting too deep.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Collection, MutableSequence
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from import_rules.dataset_checks import check_nesting, check_values_complete
from import_rules.rules import MAX_SEQUENCE_DEPTH, as_text, too_deep
from tasks.pixel_data_end import check_pixel_data_end

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"

PIXEL_DATA = 0x7FE00010
PIXEL_TAGS = frozenset({PIXEL_DATA, 0x7FE00008, 0x7FE00009})  # also float, double float
UNDEFINED_LENGTH = 0xFFFFFFFF
_TRANSFER_SYNTAX_UID = 0x00020010
_SPECIFIC_CHARACTER_SET = 0x00080005
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_PREAMBLE = 132  # 128-byte preamble + "DICM"
_KNOWN_VRS = frozenset(vr.value.encode() for vr in VR)
_LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
# The fewest bytes a level of nesting takes: a sequence's and an item's
# element headers. A top-level value shorter than this many levels' worth
# cannot nest too deep.
_LEVEL_BYTES = 16
_TOO_DEEP_BYTES = _LEVEL_BYTES * MAX_SEQUENCE_DEPTH
_NONE: frozenset[int] = frozenset()


class UnusualEncoding(Exception):
    """Not one of the plain cases this reader handles: read the file with pydicom."""


class NeedMoreData(Exception):
    """The header goes on past the bytes given; call again with more."""


class Truncated(Exception):
    """The file ends inside an element's value."""

    def __init__(self, tag: int, declared: int, available: int) -> None:
        super().__init__(f"({tag:08X}) declares {declared} bytes, {available} follow")
        self.tag = tag
        self.declared = declared
        self.available = available


@dataclass(frozen=True)
class PixelElement:
    """The first Pixel Data (or float/double float) element's header."""

    tag: int
    # 12-byte element header (explicit VR with a 32-bit length) or 8.
    long_header: bool
    length: int
    # File offset of the element header; None when the dataset was deflated,
    # since offsets in the inflated bytes do not map to the file.
    start: int | None

    @property
    def value_start(self) -> int:
        if self.start is None:
            raise ValueError("no offset in the file: the dataset was deflated")
        return self.start + (12 if self.long_header else 8)


@dataclass(frozen=True)
class Header:
    transfer_syntax: str | None
    little_endian: bool
    explicit_vr: bool
    # Wanted elements as written: (VR or None for implicit VR, value bytes).
    elements: dict[int, tuple[str | None, bytes]]
    pixel: PixelElement | None
    # The wanted elements written with another VR than the DICOM dictionary
    # gives them: their bytes do not mean what every reader takes them to
    # mean, and pydicom reads them as their VR says.
    odd_vrs: frozenset[int] = frozenset()

    def raw(self, tag: int) -> bytes | None:
        element = self.elements.get(tag)
        return element[1] if element is not None else None

    def text(self, tag: int) -> str | None:
        """An ASCII value (UI, IS, CS) without its padding; None when absent or empty."""
        raw = self.raw(tag)
        if raw is None:
            return None
        return raw.decode("latin-1").strip("\x00 ").strip() or None

    def as_written(self, tag: int) -> str | None:
        """A value's text before pydicom converts it (which raises on a bad IS),
        without its padding; None when absent or empty."""
        raw = self.raw(tag)
        if raw is None:
            return None
        return raw.decode("latin-1").strip("\x00 ") or None

    def unsigned(self, tag: int) -> int | None:
        """A US value as written; None when absent or not one 16-bit number."""
        raw = self.raw(tag)
        if raw is None or len(raw) != 2:
            return None
        return int(struct.unpack("<H" if self.little_endian else ">H", raw)[0])

    def decoded(self, tag: int) -> Any:
        """The value as pydicom converts it, in the dataset's character set."""
        element = self.elements.get(tag)
        if element is None:
            return None
        vr, value = element
        charset = self.text(_SPECIFIC_CHARACTER_SET)
        raw = RawDataElement(BaseTag(tag), vr, len(value), value, 0, vr is None,
                             self.little_endian)
        encodings = convert_encodings(charset.split("\\") if charset else None)
        return convert_raw_data_element(raw, encoding=encodings).value


def tags_for(keywords: Collection[str]) -> dict[str, int]:
    tags = {keyword: tag_for_keyword(keyword) for keyword in keywords}
    unknown = sorted(keyword for keyword, tag in tags.items() if tag is None)
    if unknown:
        raise ValueError(f"not DICOM keywords: {', '.join(unknown)}")
    return {keyword: int(tag) for keyword, tag in tags.items() if tag is not None}


def read_header(data: bytes, complete: bool, wanted: frozenset[int]) -> Header:
    """The file meta and the top-level elements up to Pixel Data of a Part 10
    file whose first bytes are ``data`` (preamble and "DICM" already checked).

    Raises:
        NeedMoreData: ``data`` ends inside the header and ``complete`` is False.
        Truncated: ``complete``, and a value goes past the end of ``data``.
        UnusualEncoding: not a plain case (see the module docstring).
        Refusal: sequences nest too deep; or, deflated, the inflated dataset
            ends inside Pixel Data or an element after it.
    """
    reader = _Reader(data, complete)
    elements: dict[int, tuple[str | None, bytes]] = {}
    start = reader.walk_meta(_PREAMBLE, elements, wanted | {_TRANSFER_SYNTAX_UID})
    transfer_syntax = elements.pop(_TRANSFER_SYNTAX_UID, (None, b""))[1]
    syntax = transfer_syntax.decode("latin-1").strip("\x00 ").strip()
    if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        if not complete:
            raise NeedMoreData
        try:
            inflated = zlib.decompress(data[start:], -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise UnusualEncoding(f"deflated dataset: {exc}") from exc
        reader = _Reader(inflated, True, offsets=False)
        start = 0
    if syntax == IMPLICIT_VR_LITTLE_ENDIAN:
        reader.set_encoding(explicit=False, little_endian=True)
    elif syntax == EXPLICIT_VR_BIG_ENDIAN:
        reader.set_encoding(explicit=True, little_endian=False)
    elif syntax and syntax.startswith("1.2.840.10008.1.2."):
        reader.set_encoding(explicit=True, little_endian=True)
    else:
        raise UnusualEncoding(f"transfer syntax {syntax!r}")
    pixel = reader.walk_dataset(start, elements, wanted)
    little_endian = syntax != EXPLICIT_VR_BIG_ENDIAN
    if pixel is not None and pixel.start is not None and not reader.offsets:
        check_pixel_data_end(lambda offset, count: reader.data[offset : offset + count],
                             pixel.value_start, pixel.length, len(reader.data),
                             reader.explicit, little_endian)
        pixel = replace(pixel, start=None)
    return Header(syntax, little_endian, reader.explicit, elements, pixel, _odd_vrs(elements))


class _Reader:
    def __init__(self, data: bytes, complete: bool, offsets: bool = True) -> None:
        self.data = data
        self.complete = complete
        self.offsets = offsets
        self.set_encoding(explicit=True, little_endian=True)

    def set_encoding(self, explicit: bool, little_endian: bool) -> None:
        self.explicit = explicit
        order = "<" if little_endian else ">"
        self.explicit_header = struct.Struct(order + "HH2sH").unpack_from
        self.implicit_header = struct.Struct(order + "HHL").unpack_from
        self.long_length = struct.Struct(order + "L").unpack_from

    def _short(self) -> None:
        """The bytes end where the header needs more."""
        if self.complete:
            raise UnusualEncoding("the header is cut short")
        raise NeedMoreData

    def _element(self, pos: int) -> tuple[int, str | None, int, int]:
        """(tag, VR, value length, header length) of the element at ``pos``."""
        if pos + 8 > len(self.data):
            self._short()
        if not self.explicit:
            group, number, length = self.implicit_header(self.data, pos)
            return (group << 16 | number), None, length, 8
        group, number, vr, length = self.explicit_header(self.data, pos)
        tag = group << 16 | number
        if group == 0xFFFE:  # items and delimiters carry no VR
            return tag, None, self.long_length(self.data, pos + 4)[0], 8
        if vr in _LONG_VRS:
            if pos + 12 > len(self.data):
                self._short()
            return tag, vr.decode(), self.long_length(self.data, pos + 8)[0], 12
        if vr not in _KNOWN_VRS:
            raise UnusualEncoding(f"VR {vr!r} at offset {pos}")
        return tag, vr.decode(), length, 8

    def walk_meta(
        self, pos: int, elements: dict[int, tuple[str | None, bytes]], wanted: frozenset[int]
    ) -> int:
        """Group 0002, always explicit VR little endian; returns where the dataset starts."""
        while True:
            if pos + 8 > len(self.data):
                if self.complete and pos == len(self.data):
                    return pos
                self._short()
            if self.data[pos : pos + 2] != b"\x02\x00":
                return pos
            tag, vr, length, header = self._element(pos)
            if length == UNDEFINED_LENGTH or vr is None:
                raise UnusualEncoding("undefined length in the file meta")
            if vr != (_DICTIONARY_VRS[tag] or vr):  # pydicom reads such a file meta its own way
                raise UnusualEncoding(f"({tag:08X}) in the file meta has VR {vr}")
            pos = self._keep(pos + header, length, tag, vr, elements, wanted)

    def walk_dataset(
        self, pos: int, elements: dict[int, tuple[str | None, bytes]], wanted: frozenset[int]
    ) -> PixelElement | None:
        data = self.data
        first = True
        too_deep_bytes = _TOO_DEEP_BYTES
        while pos < len(data):
            if first:
                self._check_vr_style(pos)
                first = False
            tag, vr, length, header = self._element(pos)
            if tag in PIXEL_TAGS:
                return PixelElement(tag, header == 12, length, pos)
            if tag >> 16 == 0xFFFE:
                raise UnusualEncoding(f"item tag at the top level, offset {pos}")
            if length < too_deep_bytes:  # nearly every value: nothing to walk into
                pos = self._keep(pos + header, length, tag, vr, elements, wanted)
            elif length == UNDEFINED_LENGTH:
                if vr not in (None, "SQ"):
                    raise UnusualEncoding(f"{vr} of undefined length")
                pos = self._past_sequence(pos + header, None)
            elif self._is_sequence(tag, vr):
                pos = self._past_sequence(pos + header, self._value_end(pos + header, length, tag))
            else:
                pos = self._keep(pos + header, length, tag, vr, elements, wanted)
        if not self.complete:
            raise NeedMoreData
        return None

    def _check_vr_style(self, pos: int) -> None:
        """pydicom switches VR style when the first element disagrees with the
        transfer syntax (two capital letters where a VR would be)."""
        if pos + 6 > len(self.data):
            self._short()
        looks_explicit = all(0x40 < b < 0x5B for b in self.data[pos + 4 : pos + 6])
        if looks_explicit != self.explicit:
            raise UnusualEncoding("the first element's VR style contradicts the transfer syntax")

    def _keep(
        self,
        start: int,
        length: int,
        tag: int,
        vr: str | None,
        elements: dict[int, tuple[str | None, bytes]],
        wanted: frozenset[int],
    ) -> int:
        end = start + length
        if end > len(self.data):
            if self.complete:
                raise Truncated(tag, length, len(self.data) - start)
            raise NeedMoreData
        if tag in wanted:
            elements[tag] = (vr, self.data[start:end])
        return end

    def _value_end(self, start: int, length: int, tag: int) -> int:
        end = start + length
        if end > len(self.data):
            if self.complete:
                raise Truncated(tag, length, len(self.data) - start)
            raise NeedMoreData
        return end

    def _is_sequence(self, tag: int, vr: str | None) -> bool:
        """pydicom reads a value of VR UN, or of no VR, as its dictionary VR:
        as a sequence in implicit VR whatever the dataset's encoding, which is
        for pydicom to read."""
        if vr not in (None, "UN"):
            return vr == "SQ"
        sequence = _DICTIONARY_VRS[tag] == "SQ"
        if sequence and vr == "UN":
            raise UnusualEncoding(f"({tag:08X}) is a sequence written as UN")
        return sequence

    def _past_sequence(self, pos: int, end: int | None) -> int:
        """Past the sequence whose value starts at ``pos``; ``end`` is where
        its length ends it, None for undefined length.

        One element at a time, with a stack of the sequences and items open
        around it (each with its end, None until its delimiter), so that no
        nesting makes it recurse. Nesting past MAX_SEQUENCE_DEPTH is refused; an
        item or sequence of defined length too short to hold that many levels
        is passed whole.
        """
        opened: list[tuple[bool, int | None]] = [(True, end)]  # (is a sequence, end)
        depth = 1
        while opened:
            in_sequence, end = opened[-1]
            if end is not None and pos >= end:
                if pos > end:
                    raise UnusualEncoding(f"a value goes past the end of its item, offset {pos}")
                opened.pop()
                depth -= in_sequence
                continue
            tag, vr, length, header = self._element(pos)
            pos += header
            if tag in (_SEQUENCE_END, _ITEM_END):
                if tag != (_SEQUENCE_END if in_sequence else _ITEM_END) or end is not None:
                    raise UnusualEncoding(f"{tag:08X} out of place, offset {pos - header}")
                opened.pop()
                depth -= in_sequence
                continue
            if in_sequence != (tag == _ITEM):
                raise UnusualEncoding(f"{tag:08X} where a sequence item was expected")
            if in_sequence:
                if length == UNDEFINED_LENGTH or _may_nest_too_deep(depth, length):
                    opened.append((False, None if length == UNDEFINED_LENGTH else pos + length))
                else:
                    pos += length
            elif length == UNDEFINED_LENGTH or (_may_nest_too_deep(depth, length)
                                                and self._is_sequence(tag, vr)):
                if length == UNDEFINED_LENGTH and vr not in (None, "SQ"):
                    raise UnusualEncoding(f"{vr} of undefined length")
                if depth == MAX_SEQUENCE_DEPTH:
                    raise too_deep()
                depth += 1
                opened.append((True, None if length == UNDEFINED_LENGTH else pos + length))
            else:
                pos += length
            if pos > len(self.data):
                self._short()
        return pos


class _DictionaryVRs(dict[int, str | None]):
    """Each tag's VR in the DICOM dictionary (None for a tag it lacks), looked
    up once: a plain dict lookup after that, since every element of the file
    meta and every wanted one is compared with it."""

    def __missing__(self, tag: int) -> str | None:
        try:
            vr: str | None = dictionary_VR(tag)
        except KeyError:
            vr = None
        self[tag] = vr
        return vr


_DICTIONARY_VRS = _DictionaryVRs()


def _may_nest_too_deep(depth: int, length: int) -> bool:
    """Whether a value of ``length`` bytes inside ``depth`` levels of sequences
    could hold sequences nested past the limit."""
    return depth + length // _LEVEL_BYTES >= MAX_SEQUENCE_DEPTH


def read_header_with_pydicom(
    fileobj: BinaryIO, wanted: frozenset[int], quiet: Callable[[], Any]
) -> Header:
    """The same :class:`Header`, read by pydicom: the lenient path for files
    :func:`read_header` declines. ``quiet`` silences pydicom while it reads.

    Raises whatever pydicom raises on a file it cannot read, and Refusal for
    sequences nested too deep.
    """
    pixel: dict[str, Any] = {}

    def stop_at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
        if tag in PIXEL_TAGS:
            pixel.update(tag=int(tag), vr=vr, length=length)
            return True
        return False

    with quiet():
        try:
            ds = read_partial(fileobj, stop_when=stop_at_pixels)
        except RecursionError:  # pydicom recurses per level of undefined length
            raise too_deep() from None
        start = fileobj.tell()
        check_nesting(ds)
        check_values_complete(ds)
        meta = getattr(ds, "file_meta", None)
        syntax = as_text(meta.get("TransferSyntaxUID")) if meta is not None else None
        little_endian = bool(ds.original_encoding[1])
        elements: dict[int, tuple[str | None, bytes]] = {}
        for tag in wanted:
            if tag not in ds:
                continue
            element = ds.get_item(tag)
            if isinstance(element, RawDataElement):
                elements[tag] = (element.VR, element.value or b"")
            else:  # pydicom converts some values (the character set) as it reads
                elements[tag] = (element.VR, _as_written(element.value))
    found = None
    if pixel:
        deflated = syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
        found = PixelElement(pixel["tag"], pixel["vr"] in EXPLICIT_VR_LENGTH_32,
                             pixel["length"], None if deflated else start)
    return Header(syntax, little_endian, not ds.original_encoding[0], elements, found,
                  _odd_vrs(elements))


def _odd_vrs(elements: dict[int, tuple[str | None, bytes]]) -> frozenset[int]:
    vrs = _DICTIONARY_VRS
    odd = [tag for tag, (vr, _) in elements.items() if vr is not None and vr != vrs[tag]]
    return frozenset(odd) if odd else _NONE


def _as_written(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, MutableSequence):
        return "\\".join(map(str, value)).encode("latin-1", "replace")
    return str(value).encode("latin-1", "replace")
