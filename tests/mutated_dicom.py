"""A seeded corpus of broken DICOM files, for tests that every reader of a
file survives whatever its bytes say.

Each mutant is a good file broken in one way that real files are broken
(cut short, a byte flipped, a VR wrong or unknown, an image bigger than its
pixels, sequences nested deep or of undefined length, empty or not DICOM at
all). The same seed makes the same bytes on every machine: a failing file is
found again by its name.
"""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from emulator.samples import ct_slice, nested_sequences, series_spec
from import_rules.rules import MAX_SEQUENCE_DEPTH

# pydicom's bundled files, one per encoding the readers take apart differently:
# explicit and implicit VR, big endian, deflated, encapsulated (RLE, and JPEG
# 2000 kept as it came), elements after Pixel Data (CT_small's padding), and
# nested sequences (structured report, RT dose and plan).
PYDICOM_BASES = (
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "SC_rgb_rle.dcm",
    "JPEG2000.dcm",
    "test-SR.dcm",
    "rtdose.dcm",
    "rtplan.dcm",
)
_PREAMBLE = 132
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_PIXEL_DATA = b"\xe0\x7f\x10\x00"
_SHORT_VRS = sorted(vr.value for vr in VR if vr not in EXPLICIT_VR_LENGTH_32)
_LONG_VRS = sorted(vr for vr in EXPLICIT_VR_LENGTH_32)
_KNOWN_VRS = frozenset(vr.value.encode() for vr in VR)


@dataclass(frozen=True)
class _Element:
    """A top-level element of an explicit VR little endian dataset, as written."""

    start: int
    vr: bytes
    value_start: int
    length: int


def good_slice(seed: str) -> bytes:
    """A small valid CT slice whose UIDs come from ``seed``."""
    return _encoded(ct_slice(series_spec(seed), 0, rows=8, columns=8))


def write_mutants(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` mutants, named ``<index>-<mutation>-<base>.dcm``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (name, data) in enumerate(mutants(count, seed)):
        path = folder / f"{index:04d}-{name}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


def mutants(count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """(mutation and base, bytes) of ``count`` mutants."""
    rng = random.Random(seed)
    bases = {name: Path(get_testdata_file(name) or "").read_bytes() for name in PYDICOM_BASES}
    for index in range(count):
        mutation = rng.choice(list(MUTATIONS))
        if rng.random() < 0.5:
            base_name, base = "ct", good_slice(f"mutant-{seed}-{index}")
        else:
            base_name = rng.choice(PYDICOM_BASES)
            base = bases[base_name]
        yield f"{mutation}-{base_name.removesuffix('.dcm')}", MUTATIONS[mutation](rng, base)


def _encoded(ds: Dataset, **options: bool) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True, **options)
    return buffer.getvalue()


def _meta_end(data: bytes) -> int:
    """Where the file meta ends, by its group length (the end of the file when
    that is missing)."""
    if data[_PREAMBLE : _PREAMBLE + 6] == b"\x02\x00\x00\x00UL":
        return min(len(data), _PREAMBLE + 12 + struct.unpack_from("<L", data, _PREAMBLE + 8)[0])
    return len(data)


def _header_end(data: bytes) -> int:
    """Just past Pixel Data's element header, or the end of the file."""
    found = data.rfind(_PIXEL_DATA)
    return len(data) if found < 0 else min(len(data), found + 12)


def _elements(data: bytes, start: int, end: int) -> list[_Element]:
    """The explicit VR little endian elements from ``start``, as far as they parse."""
    found = []
    pos = start
    while pos + 8 <= end:
        vr = data[pos + 4 : pos + 6]
        if vr not in _KNOWN_VRS:
            break
        if vr.decode() in EXPLICIT_VR_LENGTH_32:
            length, value_start = struct.unpack_from("<L", data, pos + 8)[0], pos + 12
        else:
            length, value_start = struct.unpack_from("<H", data, pos + 6)[0], pos + 8
        found.append(_Element(pos, vr, value_start, length))
        if length == 0xFFFFFFFF:
            break
        pos = value_start + length
    return found


def _explicit_le_elements(data: bytes) -> list[_Element]:
    """Meta and dataset elements, when the dataset is explicit VR little endian."""
    meta = _elements(data, _PREAMBLE, _meta_end(data))
    syntax = next((data[e.value_start : e.value_start + e.length] for e in meta
                   if data[e.start : e.start + 4] == b"\x02\x00\x10\x00"), b"")
    if syntax.rstrip(b"\x00 ") not in (b"1.2.840.10008.1.2.1", b"1.2.840.10008.1.2.5"):
        return meta
    return meta + _elements(data, _meta_end(data), _header_end(data))


def _flip(rng: random.Random, data: bytes, start: int, end: int, flips: int) -> bytes:
    mutable = bytearray(data)
    for _ in range(flips):
        if end > start:
            mutable[rng.randrange(start, end)] ^= rng.randrange(1, 256)
    return bytes(mutable)


def truncated(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def meta_flip(rng: random.Random, data: bytes) -> bytes:
    return _flip(rng, data, 128, _meta_end(data), rng.randint(1, 2))


def dataset_flip(rng: random.Random, data: bytes) -> bytes:
    return _flip(rng, data, _meta_end(data), _header_end(data), rng.randint(1, 3))


def wrong_vr(rng: random.Random, data: bytes) -> bytes:
    """A known VR in place of another, mostly one of the same header size."""
    found = _explicit_le_elements(data)
    if not found:
        return meta_flip(rng, data)
    element = rng.choice(found)
    long_header = element.vr.decode() in EXPLICIT_VR_LENGTH_32
    pool = _LONG_VRS if long_header == (rng.random() < 0.8) else _SHORT_VRS
    vr = rng.choice(pool).encode()
    return data[: element.start + 4] + vr + data[element.start + 6 :]


def unknown_vr(rng: random.Random, data: bytes) -> bytes:
    """Two capital letters that are no VR (as a writer might invent), or any two bytes."""
    found = _explicit_le_elements(data)
    if not found:
        return dataset_flip(rng, data)
    element = rng.choice(found)
    while True:
        if rng.random() < 0.7:
            vr = bytes(rng.randrange(0x41, 0x5B) for _ in range(2))
        else:
            vr = rng.randbytes(2)
        if vr not in _KNOWN_VRS:
            return data[: element.start + 4] + vr + data[element.start + 6 :]


def wrong_length(rng: random.Random, data: bytes) -> bytes:
    """An element's length off by a little, or enormous."""
    found = [e for e in _explicit_le_elements(data) if e.length != 0xFFFFFFFF]
    if not found:
        return truncated(rng, data)
    element = rng.choice(found)
    long_header = element.value_start - element.start == 12
    limit = 0xFFFFFFFE if long_header else 0xFFFF
    length = rng.choice([element.length + rng.choice([-3, -1, 1, 2, 7]), limit,
                         rng.randrange(limit)])
    length = max(0, min(length, limit))
    packed = struct.pack("<L" if long_header else "<H", length)
    at = element.start + (8 if long_header else 6)
    return data[:at] + packed + data[at + len(packed) :]


def huge_image(rng: random.Random, data: bytes) -> bytes:
    """Rows and Columns far beyond the few bytes of Pixel Data."""
    ds = _read(data)
    if ds is None or "PixelData" not in ds:
        return dataset_flip(rng, data)
    ds.Rows = rng.choice([0, 1, 4096, 30000, 65535])
    ds.Columns = rng.choice([1, 4096, 30000, 65535])
    if rng.random() < 0.5:
        ds.NumberOfFrames = rng.choice(["1", "1000", "999999"])
    return _reencoded(ds)


def deep_sequence(rng: random.Random, data: bytes) -> bytes:
    """A ContentSequence nested up to thousands of levels deep, of defined or
    undefined length, just before Pixel Data (or at the end)."""
    depth = rng.choice([5, 40, MAX_SEQUENCE_DEPTH, MAX_SEQUENCE_DEPTH + 1, 500, 3000])
    nested = nested_sequences(depth, defined_length=rng.random() < 0.5)
    ds = _read(data)
    if ds is None or ds.file_meta.get("TransferSyntaxUID") != "1.2.840.10008.1.2.1":
        data = good_slice(f"deep-{rng.random()}")
    at = data.rfind(_PIXEL_DATA)
    at = len(data) if at < 0 else at
    return data[:at] + nested + data[at:]


def undefined_length_sequences(rng: random.Random, data: bytes) -> bytes:
    """Every sequence and item of undefined length, some delimiters lost or damaged."""
    ds = _read(data)
    if ds is None or ds.file_meta.get("TransferSyntaxUID") == "1.2.840.10008.1.2.1.99":
        return dataset_flip(rng, data)
    for sequence in _sequences(ds):
        sequence.is_undefined_length = True
        for item in sequence:
            item.is_undefined_length_sequence_item = True
    written = _reencoded(ds)
    delimiters = [i for i in range(len(written) - 8)
                  if written[i : i + 8] in (_ITEM_END, _SEQUENCE_END)]
    if not delimiters or rng.random() < 0.3:
        return written
    at = rng.choice(delimiters)
    if rng.random() < 0.5:
        return written[:at] + written[at + 8 :]
    return _flip(rng, written, at, at + 8, 1)


def empty(rng: random.Random, data: bytes) -> bytes:
    return b""


def not_dicom(rng: random.Random, data: bytes) -> bytes:
    """Random bytes, text, or a preamble and 'DICM' followed by noise."""
    choice = rng.randrange(3)
    if choice == 0:
        return rng.randbytes(rng.randrange(1, 2000))
    if choice == 1:
        return b"not a DICOM file\n" * rng.randrange(1, 50)
    return bytes(128) + b"DICM" + rng.randbytes(rng.randrange(0, 500))


MUTATIONS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "truncated": truncated,
    "meta_flip": meta_flip,
    "dataset_flip": dataset_flip,
    "wrong_vr": wrong_vr,
    "unknown_vr": unknown_vr,
    "wrong_length": wrong_length,
    "huge_image": huge_image,
    "deep_sequence": deep_sequence,
    "undefined_length_sequences": undefined_length_sequences,
    "empty": empty,
    "not_dicom": not_dicom,
}


def _read(data: bytes) -> Dataset | None:
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except Exception:  # a base the mutation cannot rewrite: it mutates otherwise
        return None


def _reencoded(ds: Dataset) -> bytes:
    """Written back in the encoding it was read in."""
    implicit, little = ds.original_encoding
    return _encoded(ds, implicit_vr=bool(implicit), little_endian=bool(little))


def _sequences(ds: Dataset) -> Iterator[Sequence]:
    for element in ds:
        if element.VR == "SQ":
            yield element.value
            for item in element.value:
                yield from _sequences(item)
