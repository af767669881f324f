"""Sample DICOM for the local stack: valid CT series and files broken in one
specific way each.

Shared by the demo, the tests and the benches, so every builder writes real
Part 10 files with pydicom (nothing is downloaded) and returns their paths.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.tag import Tag
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

# A fixed root keeps generated UIDs valid (digits and dots, <= 64 characters).
_UID_ROOT = "1.2.826.0.1.3680043.8.498."
# Element headers, explicit VR little endian.
_PIXEL_DATA = b"\xe0\x7f\x10\x00"
_CONTENT_SEQUENCE = b"\x40\x00\x30\xa7SQ\x00\x00"
_ITEM = b"\xfe\xff\x00\xe0"
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED_LENGTH = b"\xff\xff\xff\xff"


def uid(seed: str) -> UID:
    """A deterministic valid UID, so corpora are the same on every run."""
    return generate_uid(prefix=_UID_ROOT, entropy_srcs=[seed])


@dataclass(frozen=True)
class SeriesSpec:
    study_instance_uid: str
    series_instance_uid: str
    series_number: int = 1
    patient_name: str = "Doe^Jane"
    patient_id: str = "PID-0001"


def series_spec(seed: str, series_number: int = 1) -> SeriesSpec:
    return SeriesSpec(uid(f"{seed}-study"), uid(f"{seed}-series"), series_number)


def ct_slice(spec: SeriesSpec, index: int, rows: int = 512, columns: int = 512) -> Dataset:
    """One 16-bit CT slice; pixel values depend on the slice so files differ."""
    sop_uid = uid(f"{spec.series_instance_uid}-{index}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = spec.study_instance_uid
    ds.SeriesInstanceUID = spec.series_instance_uid
    ds.SeriesNumber = spec.series_number
    ds.InstanceNumber = index + 1
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "S1"
    ds.AccessionNumber = "ACC1"
    ds.StudyDescription = "Synthetic CT"
    ds.Modality = "CT"
    ds.ImagePositionPatient = [0, 0, float(index)]
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    pixels = (np.arange(rows * columns, dtype=np.uint32) + index * 7) % 4096
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_ct_series(
    folder: Path,
    count: int,
    spec: SeriesSpec | None = None,
    rows: int = 512,
    columns: int = 512,
) -> list[Path]:
    """``count`` slices of one series as ``folder/slice_0000.dcm`` ..."""
    spec = spec or series_spec(str(folder))
    return [
        write(ct_slice(spec, i, rows, columns), folder / f"slice_{i:04d}.dcm") for i in range(count)
    ]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- broken files: each breaks exactly one rule ---------------------------------


def _small_slice(seed: str) -> Dataset:
    return ct_slice(series_spec(seed), 0, rows=8, columns=8)


def write_not_dicom(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is a text file, not DICOM\n" * 10)
    return path


def write_without_preamble(path: Path) -> Path:
    """Valid dataset written without the 128-byte preamble and 'DICM'."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write(_small_slice(str(path)), path)
    path.write_bytes(path.read_bytes()[132:])
    return path


def write_without_transfer_syntax(path: Path) -> Path:
    ds = _small_slice(str(path))
    del ds.file_meta.TransferSyntaxUID
    return _write_as_is(ds, path)


def write_with_transfer_syntax(path: Path, transfer_syntax: str) -> Path:
    """A small slice, its dataset explicit VR little endian whatever the file
    meta says; pydicom refuses to write a DICOM-rooted UID it does not know
    as a transfer syntax, so a private one of the same length stands in."""
    ds = _small_slice(str(path))
    stand_in = "9" * len(transfer_syntax)
    ds.file_meta.TransferSyntaxUID = UID(stand_in)
    _write_as_is(ds, path)
    path.write_bytes(path.read_bytes().replace(stand_in.encode(), transfer_syntax.encode(), 1))
    return path


def _write_as_is(ds: Dataset, path: Path) -> Path:
    """Write the file meta unchecked (enforce_file_format would refuse it),
    still as Part 10: preamble, 'DICM', explicit VR little endian dataset."""
    ds.preamble = b"\0" * 128
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, implicit_vr=False, little_endian=True, enforce_file_format=False)
    return path


def write_with(path: Path, **attributes: object) -> Path:
    """A small valid slice with attributes overridden (``None`` deletes one)."""
    ds = _small_slice(str(path))
    # The invalid values are the point: neither warn nor log about them.
    settings = pydicom.config.settings
    modes = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        for keyword, value in attributes.items():
            # Each element keeps the validation mode it was created with: re-create it.
            if keyword in ds:
                delattr(ds, keyword)
            if value is not None:
                setattr(ds, keyword, value)
        if (sop_instance_uid := attributes.get("SOPInstanceUID")) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = UID(str(sop_instance_uid))
        return write(ds, path)
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = modes


def write_with_text(path: Path, keyword: str, text: str) -> Path:
    """A small valid slice with one value written exactly as given, which
    pydicom would otherwise refuse or convert (an IS of 'abc')."""
    ds = _small_slice(str(path))
    number = tag_for_keyword(keyword)
    if number is None:
        raise ValueError(f"{keyword} is not a DICOM keyword")
    tag = Tag(number)
    value = text.encode("latin-1")
    value += b" " * (len(value) % 2)
    ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
    return write(ds, path)


def write_with_vr(path: Path, keyword: str, vr: bytes) -> Path:
    """A small valid slice with one element's VR written as ``vr``."""
    write(_small_slice(str(path)), path)
    return replace_vr(path, keyword, vr)


def replace_vr(path: Path, keyword: str, vr: bytes) -> Path:
    """The file at ``path`` (explicit VR little endian) with one element's VR
    written as ``vr``, which may be no VR at all (b"ZZ"): pydicom writes only
    the VRs it knows."""
    number = tag_for_keyword(keyword)
    if number is None:
        raise ValueError(f"{keyword} is not a DICOM keyword")
    header = struct.pack("<HH", number >> 16, number & 0xFFFF) + dictionary_VR(number).encode()
    data = path.read_bytes()
    if data.count(header) != 1:
        raise ValueError(f"{keyword} is not written once in {path}")
    path.write_bytes(data.replace(header, header[:4] + vr))
    return path


def nested_sequences(depth: int, defined_length: bool = False) -> bytes:
    """ContentSequence items nested ``depth`` levels deep (a few bytes a
    level), explicit VR little endian; each sequence and item of undefined
    length, or of the length of what it holds."""
    body = b"\x08\x00\x00\x01SH\x02\x00x "  # CodeValue
    for _ in range(depth):
        if defined_length:
            item = _ITEM + struct.pack("<L", len(body)) + body
            body = _CONTENT_SEQUENCE + struct.pack("<L", len(item)) + item
        else:
            item = _ITEM + _UNDEFINED_LENGTH + body + _ITEM_END
            body = _CONTENT_SEQUENCE + _UNDEFINED_LENGTH + item + _SEQUENCE_END
    return body


def write_nested(path: Path, depth: int, defined_length: bool = False) -> Path:
    """A small valid slice with sequences nested ``depth`` levels deep
    (``nested_sequences``), just before Pixel Data."""
    write(_small_slice(str(path)), path)
    data = path.read_bytes()
    at = data.index(_PIXEL_DATA)
    path.write_bytes(data[:at] + nested_sequences(depth, defined_length) + data[at:])
    return path


def write_oversized_rle(path: Path, rows: int = 30000, columns: int = 30000) -> Path:
    """A 16-bit RLE image declaring ``rows`` x ``columns`` (1.8 GB decoded at
    the default) in a few KB: each of its two byte-plane segments is a few
    runs of zeros, far too few for the size declared. Decoding it would
    allocate the whole image first."""
    ds = _small_slice(str(path))
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.Rows, ds.Columns = rows, columns
    runs = bytes([0x81, 0]) * 1000  # 1000 runs of 128 zero bytes per segment
    header = (2).to_bytes(4, "little") + (64).to_bytes(4, "little")
    header += (64 + len(runs)).to_bytes(4, "little") + bytes(52)
    ds.PixelData = encapsulate([header + runs + runs])
    ds["PixelData"].VR = "OB"
    return write(ds, path)


def write_truncated_meta(path: Path) -> Path:
    """A valid slice cut inside its file meta information."""
    write(_small_slice(str(path)), path)
    path.write_bytes(path.read_bytes()[:200])
    return path


def write_pixel_mismatch(path: Path) -> Path:
    ds = _small_slice(str(path))
    ds.PixelData = ds.PixelData[:-10]
    return write(ds, path)


def write_truncated(path: Path) -> Path:
    write(_small_slice(str(path)), path)
    path.write_bytes(path.read_bytes()[:-20])
    return path


def write_duplicate_of(original: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(original.read_bytes())
    return path


BROKEN_MAKERS: dict[str, Callable[[Path], Path]] = {
    "not_p10": write_not_dicom,
    "no_transfer_syntax": write_without_transfer_syntax,
    "missing_uid": lambda p: write_with(p, SeriesInstanceUID=None),
    "attribute_too_long": lambda p: write_with(p, StudyDescription="x" * 257),
    "invalid_image_attribute": lambda p: write_with_text(p, "NumberOfFrames", "abc"),
    "image_too_large": write_oversized_rle,
    "pixel_data_size_mismatch": write_pixel_mismatch,
    "truncated": write_truncated,
}
"""One maker per refusal a file's content earns, keyed by its reason code's
value (``import_rules.codes.ReasonCode``)."""


# --- the demo corpus --------------------------------------------------------------

# Real files from pydicom's own test data (installed with pydicom, never
# downloaded), with the status each gets: several transfer syntaxes,
# multi-frame, colour, lossy JPEG (kept as it came, with a warning), and two
# re-encodings of MR_small that carry its SOP Instance UID (duplicates).
DEMO_PYDICOM_FILES = {
    "CT_small.dcm": "imported",
    "MR_small.dcm": "imported",
    "MR_small_bigendian.dcm": "duplicate",
    "MR_small_RLE.dcm": "duplicate",
    "JPEG2000.dcm": "imported",
    "SC_rgb_rle_2frame.dcm": "imported",
    "rtdose.dcm": "imported",
    "JPEG-lossy.dcm": "imported_with_warnings",
}


def write_demo_corpus(folder: Path, slices_per_series: int = 12) -> dict[str, str]:
    """The ``dicom-import demo`` input: real files, a generated three-series CT
    study and a few broken files. Returns the expected report status per path."""
    expected: dict[str, str] = {}
    for name, status in DEMO_PYDICOM_FILES.items():
        target = folder / "pydicom" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((PYDICOM_TEST_FILES / name).read_bytes())
        expected[str(target)] = status
    study = uid("demo-study")
    for number in (1, 2, 3):
        spec = SeriesSpec(study, uid(f"demo-series-{number}"), series_number=number)
        for path in write_ct_series(
            folder / "ct-study" / f"series-{number}", slices_per_series, spec, rows=256, columns=256
        ):
            expected[str(path)] = "imported"
    for code in (
        "not_p10",
        "missing_uid",
        "attribute_too_long",
        "pixel_data_size_mismatch",
        "truncated",
    ):
        expected[str(BROKEN_MAKERS[code](folder / "broken" / f"{code}.dcm"))] = "invalid"
    first = folder / "ct-study" / "series-1" / "slice_0000.dcm"
    expected[str(write_duplicate_of(first, folder / "z-copies" / "slice_0000.dcm"))] = "duplicate"
    return expected
