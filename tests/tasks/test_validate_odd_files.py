"""Whatever one file's header does (any exception, any nesting, any size),
validation ends that file invalid with a reason code and a message, and goes
on with the others."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import RLELossless

from emulator.samples import (
    replace_vr,
    series_spec,
    write,
    write_ct_series,
    write_nested,
    write_with,
)
from import_rules.codes import ReasonCode
from import_rules.rules import MAX_SEQUENCE_DEPTH
from tasks.discover import SourceFile
from tasks.statuses import FileValidity
from tasks.validate import ValidationRecord, validate_file, validate_files
from tests.mutated_dicom import MUTATIONS, write_mutants

SEED = 20261207
MUTANTS = 400
# What the generated slices carry about their patient (emulator.samples).
PHI = ("Doe^Jane", "PID-0001", "19700101")


def _source(path: Path) -> SourceFile:
    return SourceFile(str(path), path.stat().st_size, "v", path.name)


def _validate(path: Path) -> ValidationRecord:
    return validate_file(_source(path))


@pytest.mark.timeout(120)
def test_no_file_stops_validation(tmp_path: Path) -> None:
    good = write_ct_series(tmp_path / "good", 20, series_spec("odd-good"), rows=8, columns=8)
    mutants = write_mutants(tmp_path / "mutants", MUTANTS, SEED)
    assert {path.name.split("-")[1] for path in mutants} == set(MUTATIONS)
    files = [_source(path) for path in sorted(good + mutants)]

    records = validate_files(files, workers=2)

    assert [record.uri for record in records] == [source.uri for source in files]
    by_uri = {record.uri: record for record in records}
    assert {by_uri[str(path)].status for path in good} == {FileValidity.VALID}
    refused = [record for record in records if not record.is_valid]
    assert len(refused) > MUTANTS // 2
    for record in refused:
        assert isinstance(record.reason_code, ReasonCode), record.uri
        assert record.reason_message, record.uri
        assert not any(value in record.reason_message for value in PHI), record.reason_message


@pytest.mark.parametrize("defined_length", [False, True], ids=["undefined", "defined"])
@pytest.mark.parametrize("by_pydicom", [False, True], ids=["lean", "pydicom"])
def test_sequences_nested_past_the_limit_are_refused(
    tmp_path: Path, defined_length: bool, by_pydicom: bool
) -> None:
    """Both readers count levels without recursing: at the limit the file is
    valid, one level deeper it is not, and nor are 500 or 3,000 levels."""
    for depth in (MAX_SEQUENCE_DEPTH, MAX_SEQUENCE_DEPTH + 1, 500, 3000):
        path = write_nested(tmp_path / f"{depth}.dcm", depth, defined_length=defined_length)
        if by_pydicom:  # a VR the lean reader declines, on an attribute no rule reads
            replace_vr(path, "ImagePositionPatient", b"ZZ")
        record = _validate(path)
        if depth == MAX_SEQUENCE_DEPTH:
            assert record.status is FileValidity.VALID, record.reason_message
            continue
        assert record.reason_code is ReasonCode.SEQUENCE_TOO_DEEP, record.reason_message
        assert record.reason_message == (
            f"The DICOM file nests sequences more than {MAX_SEQUENCE_DEPTH} levels deep"
        )


def test_a_flipped_vr_in_the_file_meta_is_unreadable(tmp_path: Path) -> None:
    """(0002,0001) written OB becomes O\\xe9: pydicom then reads the file meta
    with the wrong lengths and raises on a value it cannot convert."""
    path = write_with(tmp_path / "flipped.dcm")
    replace_vr(path, "FileMetaInformationVersion", b"O\xe9")
    record = _validate(path)
    assert record.reason_code is ReasonCode.UNREADABLE
    assert record.reason_message is not None
    assert record.reason_message.startswith(
        "The DICOM file could not be parsed: Expected total bytes to be an even multiple"
    )


def test_an_unreadable_value_is_not_quoted(tmp_path: Path) -> None:
    """A patient's name written as FD, ten bytes where numbers take eight:
    pydicom's error quotes the bytes, the message does not."""
    path = write_with(tmp_path / "name.dcm", PatientName="Doe^Jane^Q")
    replace_vr(path, "PatientName", b"FD")
    record = _validate(path)
    assert record.reason_code is ReasonCode.UNREADABLE
    assert record.reason_message is not None
    assert "PatientName has an invalid value" in record.reason_message
    assert "Doe" not in record.reason_message


def test_encapsulated_pixel_data_cut_short_is_truncated(tmp_path: Path) -> None:
    """Its end is found from the fragments' item headers, not read."""
    path = write_ct_series(tmp_path, 1, rows=16, columns=16)[0]
    ds = dcmread(path)
    ds.compress(RLELossless)
    write(ds, path)
    path.write_bytes(path.read_bytes()[:-20])
    record = _validate(path)
    assert record.reason_code is ReasonCode.TRUNCATED
    assert record.reason_message == (
        f"The DICOM file is truncated: it ends at byte {path.stat().st_size}, inside Pixel "
        "Data, before the sequence delimiter that ends its fragments"
    )
