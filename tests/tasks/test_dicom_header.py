"""The lean header reader against pydicom: on every Part 10 file pydicom ships
for its own tests, it either declines, finds a value cut short by the end of
the file, or reads what pydicom reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.samples import PYDICOM_TEST_FILES, ct_slice, series_spec, write
from tasks.dicom_header import (
    NeedMoreData,
    Truncated,
    UnusualEncoding,
    read_header,
    read_header_with_pydicom,
    tags_for,
)
from tasks.validate import _quiet_pydicom

WANTED = frozenset(
    tags_for(
        ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber",
         "PatientName", "StudyDescription", "Rows", "Columns", "BitsAllocated",
         "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation",
         "SpecificCharacterSet"]
    ).values()
)


def _part10_files() -> list[Path]:
    return sorted(
        path for path in PYDICOM_TEST_FILES.rglob("*")
        if path.is_file() and path.read_bytes()[128:132] == b"DICM"
    )


def test_reads_what_pydicom_reads_or_declines() -> None:
    agreed, declined, truncated = [], [], []
    for path in _part10_files():
        try:
            lean = read_header(path.read_bytes(), True, WANTED)
        except UnusualEncoding:
            declined.append(path.name)
            continue
        except Truncated:
            truncated.append(path.name)
            continue
        with path.open("rb") as fileobj:
            reference = read_header_with_pydicom(fileobj, WANTED, _quiet_pydicom)
        assert lean.transfer_syntax == reference.transfer_syntax, path.name
        assert lean.little_endian == reference.little_endian, path.name
        assert lean.pixel == reference.pixel, path.name
        assert {t: lean.text(t) for t in lean.elements} == {
            t: reference.text(t) for t in reference.elements
        }, path.name
        agreed.append(path.name)
    # Declining is always safe; declining the common file would make it slow.
    assert len(agreed) > 10 * len(declined), declined
    assert {"MR_small_bigendian.dcm", "MR_small_implicit.dcm", "image_dfl.dcm",
            "JPEG2000.dcm", "CT_small.dcm"} <= set(agreed)
    assert truncated == ["rtplan_truncated.dcm"]


def test_asks_for_more_bytes_until_told_there_are_none(tmp_path: Path) -> None:
    data = write(ct_slice(series_spec("short"), 0, rows=8, columns=8),
                 tmp_path / "f.dcm").read_bytes()
    header = read_header(data, True, WANTED)
    assert header.pixel is not None and header.pixel.start is not None
    cut = header.pixel.start - 5  # inside the header of the element before Pixel Data

    with pytest.raises(NeedMoreData):
        read_header(data[:cut], False, WANTED)
    with pytest.raises(UnusualEncoding):  # pydicom drops such an element: let it read
        read_header(data[:cut], True, WANTED)
    with pytest.raises(Truncated):  # inside that element's value: the import refuses it
        read_header(data[: header.pixel.start - 1], True, WANTED)


def test_values_and_pixel_element(tmp_path: Path) -> None:
    path = write(ct_slice(series_spec("values"), 3, rows=16, columns=8), tmp_path / "f.dcm")
    data = path.read_bytes()
    tags = tags_for(["Rows", "Columns", "SeriesNumber", "PatientName"])

    header = read_header(data, True, WANTED)

    assert header.unsigned(tags["Rows"]) == 16
    assert header.unsigned(tags["Columns"]) == 8
    assert header.text(tags["SeriesNumber"]) == "1"
    assert str(header.decoded(tags["PatientName"])) == "Doe^Jane"
    assert header.pixel is not None and header.pixel.length == 16 * 8 * 2
    assert header.pixel.start == len(data) - 16 * 8 * 2 - 12
