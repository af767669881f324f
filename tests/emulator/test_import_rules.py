"""Each import rule through both of its users: the same generated file is
validated before upload (``tasks.validate``) and imported by the local
service, and the two agree. Refused: invalid with a reason code, and a
FAILURE line with the same message. Imported with a warning: valid with that
warning expected, and a WARNING line with it. Fine: valid, and a SUCCESS
line without warnings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from emulator.config import ServiceConfig
from emulator.edge.server import LocalService
from emulator.samples import (
    ct_slice,
    replace_vr,
    series_spec,
    write,
    write_nested,
    write_not_dicom,
    write_oversized_rle,
    write_pixel_mismatch,
    write_truncated,
    write_truncated_meta,
    write_with,
    write_with_text,
    write_with_transfer_syntax,
    write_with_vr,
    write_without_transfer_syntax,
)
from import_rules.codes import ReasonCode, WarningCode, warning_label
from import_rules.rules import MAX_SEQUENCE_DEPTH
from tasks.discover import SourceFile
from tasks.statuses import FileValidity
from tasks.validate import ValidationRecord, validate_file
from tests.emulator.conftest import BUCKET, make_clients, wait_datastore_active
from tests.emulator.test_import import ImportRun, run_import
from tests.mutated_dicom import write_mutants

MUTANTS = 400
MUTANTS_SEED = 1207


@dataclass(frozen=True)
class Case:
    make: Callable[[Path], Path]
    refused: ReasonCode | None = None
    warned: WarningCode | None = None


def _video(path: Path, transfer_syntax: str) -> Path:
    """One frame of 'video' in a fragmentable H.264 syntax: a bitstream is
    stored as it came, never decoded."""
    ds = ct_slice(series_spec(str(path)), 0, rows=8, columns=8)
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([b"\x00\x00\x00\x01\x09\xf0" * 10])
    ds["PixelData"].VR = "OB"
    return write(ds, path)


def _padding_cut_short(path: Path) -> Path:
    """Cut inside an element after Pixel Data, which validation does not read."""
    write_with(path, DataSetTrailingPadding=b"\x00" * 64)
    path.write_bytes(path.read_bytes()[:-10])
    return path


CASES: dict[str, Case] = {
    "valid": Case(lambda p: write_with(p)),
    "not_p10": Case(write_not_dicom, refused=ReasonCode.NOT_P10),
    "cut_in_file_meta": Case(write_truncated_meta, refused=ReasonCode.TRUNCATED),
    "cut_in_pixel_data": Case(write_truncated, refused=ReasonCode.TRUNCATED),
    "no_transfer_syntax": Case(write_without_transfer_syntax,
                               refused=ReasonCode.NO_TRANSFER_SYNTAX),
    "private_transfer_syntax": Case(
        lambda p: write_with_transfer_syntax(p, "1.2.3.4.5"),
        warned=WarningCode.UNSUPPORTED_TRANSFER_SYNTAX,
    ),
    "jpeg_xl_transfer_syntax": Case(
        lambda p: write_with_transfer_syntax(p, "1.2.840.10008.1.2.4.110"),
        warned=WarningCode.UNSUPPORTED_TRANSFER_SYNTAX,
    ),
    "h264_fragmentable": Case(lambda p: _video(p, "1.2.840.10008.1.2.4.102.1")),
    "no_sop_instance_uid": Case(lambda p: write_with(p, SOPInstanceUID=None),
                                refused=ReasonCode.MISSING_UID),
    "uid_of_70": Case(lambda p: write_with(p, SOPInstanceUID="1." + "2" * 68),
                      warned=WarningCode.INVALID_UID_FORMAT),
    "uid_leading_zero": Case(lambda p: write_with(p, SeriesInstanceUID="1.2.826.0.01.5"),
                             warned=WarningCode.INVALID_UID_FORMAT),
    "uid_empty_component": Case(lambda p: write_with(p, StudyInstanceUID="1.2.3..4"),
                                warned=WarningCode.INVALID_UID_FORMAT),
    "uid_of_256": Case(lambda p: write_with(p, SOPInstanceUID="1." + "2" * 254),
                       warned=WarningCode.INVALID_UID_FORMAT),
    "uid_of_257": Case(lambda p: write_with(p, SOPInstanceUID="1." + "2" * 255),
                       refused=ReasonCode.ATTRIBUTE_TOO_LONG),
    "study_description_of_65": Case(lambda p: write_with(p, StudyDescription="d" * 65),
                                    warned=WarningCode.INVALID_DICOM_VALUE_LENGTH),
    "study_description_of_257": Case(lambda p: write_with(p, StudyDescription="d" * 257),
                                     refused=ReasonCode.ATTRIBUTE_TOO_LONG),
    "accession_number_of_17": Case(lambda p: write_with(p, AccessionNumber="A" * 17),
                                   warned=WarningCode.INVALID_DICOM_VALUE_LENGTH),
    "study_id_of_256": Case(lambda p: write_with(p, StudyID="1" * 256),
                            warned=WarningCode.INVALID_DICOM_VALUE_LENGTH),
    "patient_id_of_257": Case(lambda p: write_with(p, PatientID="P" * 257),
                              refused=ReasonCode.ATTRIBUTE_TOO_LONG),
    "patient_sex_of_17": Case(lambda p: write_with(p, PatientSex="F" * 17),
                              refused=ReasonCode.ATTRIBUTE_TOO_LONG),
    "study_time_of_13": Case(lambda p: write_with(p, StudyTime="120000.123456")),
    "study_date_of_18": Case(lambda p: write_with(p, StudyDate="20240101-20240102X"),
                             warned=WarningCode.INVALID_DICOM_VALUE_LENGTH),
    "no_rows": Case(lambda p: write_with(p, Rows=None),
                    refused=ReasonCode.INVALID_IMAGE_ATTRIBUTE),
    "frames_not_a_number": Case(lambda p: write_with_text(p, "NumberOfFrames", "abc"),
                                refused=ReasonCode.INVALID_IMAGE_ATTRIBUTE),
    "frames_zero": Case(lambda p: write_with_text(p, "NumberOfFrames", "0"),
                        refused=ReasonCode.INVALID_IMAGE_ATTRIBUTE),
    "frames_padded": Case(lambda p: write_with_text(p, "NumberOfFrames", " 1")),
    "oversized_rle": Case(write_oversized_rle, refused=ReasonCode.IMAGE_TOO_LARGE),
    "pixel_data_too_short": Case(write_pixel_mismatch,
                                 refused=ReasonCode.PIXEL_DATA_SIZE_MISMATCH),
    "rows_of_unknown_vr": Case(lambda p: write_with_vr(p, "Rows", b"ZZ"),
                               refused=ReasonCode.INVALID_IMAGE_ATTRIBUTE),
    "patient_name_as_fd": Case(lambda p: replace_vr(write_with(p, PatientName="Doe^Jane^Q"),
                                                    "PatientName", b"FD"),
                               refused=ReasonCode.UNREADABLE),
    "padding_cut_short": Case(_padding_cut_short, refused=ReasonCode.TRUNCATED),
    "nested_at_the_limit": Case(lambda p: write_nested(p, MAX_SEQUENCE_DEPTH)),
    "nested_past_the_limit": Case(lambda p: write_nested(p, MAX_SEQUENCE_DEPTH + 1),
                                  refused=ReasonCode.SEQUENCE_TOO_DEEP),
    "nested_500_deep": Case(lambda p: write_nested(p, 500, defined_length=True),
                            refused=ReasonCode.SEQUENCE_TOO_DEEP),
}


@dataclass(frozen=True)
class BothSides:
    record: ValidationRecord
    run: ImportRun
    key: str


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, BothSides]]:
    """Every case validated, then all imported in one job."""
    folder = tmp_path_factory.mktemp("rules")
    paths = {name: case.make(folder / f"{name}.dcm") for name, case in CASES.items()}
    records = {
        name: validate_file(SourceFile(str(path), path.stat().st_size, "v", path.name))
        for name, path in paths.items()
    }
    with LocalService(config=ServiceConfig(datastore_transition_seconds=0.05)) as svc:
        mi, s3 = make_clients(svc)
        s3.create_bucket(Bucket=BUCKET)
        datastore_id = mi.create_datastore(datastoreName="rules")["datastoreId"]
        wait_datastore_active(mi, datastore_id)
        files = {f"{name}.dcm": path.read_bytes() for name, path in paths.items()}
        run = run_import(mi, s3, datastore_id, files, "rules/")
        yield {name: BothSides(records[name], run, f"rules/{name}.dcm") for name in CASES}


# On one worker: every case shares one validation and one import job (judged).
@pytest.mark.xdist_group("import-rules")
@pytest.mark.parametrize("name", list(CASES))
def test_validation_and_the_import_agree(judged: dict[str, BothSides], name: str) -> None:
    case, both = CASES[name], judged[name]
    record, run = both.record, both.run
    failures = {line["inputFile"]: line["exception"] for line in run.failure}
    warnings = {line["inputFile"]: line["warnings"] for line in run.warning}
    imported = {line["inputFile"] for line in run.success}

    if case.refused is not None:
        assert record.status is FileValidity.INVALID
        assert record.reason_code == case.refused, record.reason_message
        assert both.key not in imported
        assert failures[both.key] == {
            "exceptionType": "ValidationException", "message": record.reason_message,
        }
        return
    assert record.status is FileValidity.VALID, record.reason_message
    assert both.key in imported, failures.get(both.key)
    if case.warned is None:
        assert record.expected_warnings is None
        assert both.key not in warnings
        return
    assert record.expected_warnings == warning_label(case.warned)
    assert [w["warning_reason_code"] for w in warnings[both.key]] == [case.warned]


@pytest.mark.timeout(300)
def test_validation_and_the_import_agree_on_mutated_files(tmp_path: Path) -> None:
    """Several hundred broken files (tests.mutated_dicom) in one job: the job
    completes, and every file validation holds back has a FAILURE line, every
    file it passes is imported with at least the warnings it expected."""
    paths = write_mutants(tmp_path, MUTANTS, MUTANTS_SEED)
    records = {path.name: validate_file(SourceFile(str(path), path.stat().st_size, "v",
                                                   path.name)) for path in paths}
    with LocalService(config=ServiceConfig(datastore_transition_seconds=0.05)) as svc:
        mi, s3 = make_clients(svc)
        s3.create_bucket(Bucket=BUCKET)
        datastore_id = mi.create_datastore(datastoreName="mutants")["datastoreId"]
        wait_datastore_active(mi, datastore_id)
        run = run_import(mi, s3, datastore_id, {p.name: p.read_bytes() for p in paths},
                         "mutants/")
    assert run.job["jobStatus"] == "COMPLETED", run.job.get("message")
    failed = {line["inputFile"]: line["exception"] for line in run.failure}
    imported = {line["inputFile"]: {w["type"] for w in line.get("warnings", [])}
                for line in run.success + run.warning}
    disagree = []
    for name, record in records.items():
        key = f"mutants/{name}"
        if record.is_valid:
            expected = set(filter(None, (record.expected_warnings or "").split(";")))
            warned = {warning_label(WarningCode[kind]) for kind in imported.get(key, ())}
            if key not in imported or not expected <= warned:
                disagree.append(f"{name}: valid, expecting {expected}; import: "
                                f"{failed.get(key) or warned}")
        elif failed.get(key, {}).get("exceptionType") != "ValidationException":
            disagree.append(f"{name}: {record.reason_message}; import: imported")
    assert disagree == []


def test_cut_inside_the_file_meta_is_truncated(tmp_path: Path) -> None:
    """Read as far as it goes, such a file has no transfer syntax and no UIDs:
    neither is the reason."""
    path = write_truncated_meta(tmp_path / "cut.dcm")
    record = validate_file(SourceFile(str(path), path.stat().st_size, "v", path.name))
    assert record.reason_code is ReasonCode.TRUNCATED
    assert record.reason_message == (
        "The DICOM file is truncated: its file meta information ends at byte 350 "
        "but the file has 200 bytes"
    )


def test_a_non_numeric_number_of_frames_says_so(tmp_path: Path) -> None:
    path = write_with_text(tmp_path / "frames.dcm", "NumberOfFrames", "abc")
    record = validate_file(SourceFile(str(path), path.stat().st_size, "v", path.name))
    assert record.reason_code is ReasonCode.INVALID_IMAGE_ATTRIBUTE
    assert record.reason_message == (
        "DICOM attribute NumberOfFrames is 'abc', which is not an integer string (IS)"
    )


def test_oversized_rle_is_refused_before_decoding(tmp_path: Path) -> None:
    """30000 x 30000 pixels in a few KB: the service refuses it from the header
    (decoding would first allocate 1.8 GB). A fresh interpreter, so that its
    peak memory is this import's alone."""
    path = write_oversized_rle(tmp_path / "huge.dcm")
    small = write_with(tmp_path / "small.dcm")
    assert path.stat().st_size < 10_000
    record = validate_file(SourceFile(str(path), path.stat().st_size, "v", path.name))
    assert record.reason_code is ReasonCode.IMAGE_TOO_LARGE
    script = textwrap.dedent(
        f"""
        import json, resource
        from emulator.config import ServiceConfig
        from emulator.edge.server import LocalService
        from tests.emulator.conftest import BUCKET, make_clients, wait_datastore_active
        from tests.emulator.test_import import run_import

        with LocalService(config=ServiceConfig(datastore_transition_seconds=0.05)) as svc:
            mi, s3 = make_clients(svc)
            s3.create_bucket(Bucket=BUCKET)
            ds = mi.create_datastore(datastoreName="huge")["datastoreId"]
            wait_datastore_active(mi, ds)
            run_import(mi, s3, ds, {{"small.dcm": open({str(small)!r}, "rb").read()}},
                       "warm/")  # every code path loaded before measuring
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            run = run_import(mi, s3, ds, {{"huge.dcm": open({str(path)!r}, "rb").read()}},
                             "huge/")
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"failure": run.failure, "grew_kib": after - before}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).parents[2], env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failure"] == [{
        "inputFile": "huge/huge.dcm",
        "exception": {"exceptionType": "ValidationException", "message": record.reason_message},
    }]
    assert result["grew_kib"] < 100 * 1024
