"""Where Pixel Data ends, and whether what follows it is whole, found without
reading the pixels.

The import reads the whole file and refuses one cut inside Pixel Data or
inside an element after it (trailing padding, a digital signature); pydicom,
which it reads with, finds the end of encapsulated Pixel Data by walking its
fragments and, when they do not lead to the sequence delimiter, by scanning
for the delimiter. Validation finds the end the same way, but from the item
headers alone (a read of 8 bytes each), and only when the file does not
simply end with the delimiter, as nearly every one does.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator

from import_rules.dataset_checks import check_nesting, check_values_complete
from import_rules.rules import too_deep, truncated, truncated_element

PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_SEQUENCE_END = 0xFFFEE0DD
# The delimiter is searched for in reads of this size.
_SCAN_READ = 1 << 20

ReadAt = Callable[[int, int], bytes]
"""``read_at(offset, count)``: up to ``count`` bytes of the source from ``offset``."""


def check_pixel_data_end(
    read_at: ReadAt, value_start: int, length: int, size: int,
    explicit_vr: bool, little_endian: bool,
) -> None:
    """Pixel Data's value starts at ``value_start`` of a source of ``size``
    bytes: it ends within the source, and so does every element after it.

    Raises:
        Refusal: truncated, or the elements after Pixel Data nest too deep.
    """
    order = "<" if little_endian else ">"
    if length != UNDEFINED_LENGTH:
        end = value_start + length
        if end > size:
            raise truncated_element(PIXEL_DATA, length, size - value_start)
    else:
        delimiter = struct.pack(order + "HHL", _SEQUENCE_END >> 16, _SEQUENCE_END & 0xFFFF, 0)
        if size - 8 >= value_start and read_at(size - 8, 8) == delimiter:
            return
        end = _past_fragments(read_at, value_start, size, order)
    if end < size:
        _check_trailing(read_at(end, size - end), explicit_vr, little_endian)


def _past_fragments(read_at: ReadAt, pos: int, size: int, order: str) -> int:
    """Past the sequence delimiter that ends encapsulated Pixel Data, as
    pydicom finds it (``read_undefined_length_value``)."""
    item = struct.Struct(order + "HHL")
    start = pos
    while pos + 8 <= size:
        group, number, length = item.unpack(read_at(pos, 8))
        tag = group << 16 | number
        if tag == _SEQUENCE_END:
            return pos + 8
        if tag != _ITEM:
            break
        pos += 8 + length
    return _scanned_past_delimiter(read_at, start, size, order)


def _scanned_past_delimiter(read_at: ReadAt, pos: int, size: int, order: str) -> int:
    delimiter = struct.pack(order + "HH", _SEQUENCE_END >> 16, _SEQUENCE_END & 0xFFFF)
    while pos < size:
        chunk = read_at(pos, _SCAN_READ)
        found = chunk.find(delimiter)
        if found >= 0:
            return min(size, pos + found + 8)
        if len(chunk) < _SCAN_READ:
            break
        pos += len(chunk) - len(delimiter) + 1
    raise truncated(f"it ends at byte {size}, inside Pixel Data, before the sequence "
                    "delimiter that ends its fragments")


def _check_trailing(tail: bytes, explicit_vr: bool, little_endian: bool) -> None:
    """The elements after Pixel Data, read as pydicom reads them."""
    try:
        elements = list(data_element_generator(io.BytesIO(tail), not explicit_vr, little_endian))
    except EOFError:  # a value of undefined length that runs to the end of the file
        raise truncated("an element after Pixel Data has no end") from None
    except RecursionError:  # pydicom recurses per level of undefined length
        raise too_deep() from None
    trailing = Dataset({element.tag: element for element in elements})
    check_values_complete(trailing)
    check_nesting(trailing)
