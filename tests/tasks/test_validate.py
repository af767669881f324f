from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import fields, replace
from pathlib import Path

import boto3
import pytest
from pydicom import dcmread

from emulator.samples import (
    BROKEN_MAKERS,
    PYDICOM_TEST_FILES,
    ct_slice,
    series_spec,
    write,
    write_ct_series,
    write_duplicate_of,
    write_with,
    write_without_preamble,
)
from import_rules.codes import ReasonCode
from tasks.discover import SourceFile, iter_source
from tasks.statuses import FileValidity
from tasks.validate import (
    Findings,
    ValidationRecord,
    mark_duplicates,
    validate_file,
    validate_files,
)


def _source(path: Path) -> SourceFile:
    return SourceFile(str(path), path.stat().st_size, "v", path.name)


def _check(path: Path, **kwargs: bool):
    return validate_file(_source(path), **kwargs)


class TestPydicomTestFiles:
    @pytest.mark.parametrize(
        "name",
        [
            "CT_small.dcm",  # explicit VR little endian
            "MR_small_implicit.dcm",
            "MR_small_bigendian.dcm",
            "image_dfl.dcm",  # deflated
            "JPEG2000.dcm",
            "MR_small_RLE.dcm",
            "SC_rgb_jpeg_dcmtk.dcm",
            "MR_small_jpeg_ls_lossless.dcm",
            "SC_rgb_small_odd.dcm",  # odd-length pixel data, padded
            "SC_ybr_full_422_uncompressed.dcm",
        ],
    )
    def test_valid_files_pass(self, name: str) -> None:
        path = PYDICOM_TEST_FILES / name
        record = _check(path)

        assert record.status is FileValidity.VALID, record.reason_message
        reference = dcmread(path)
        assert record.sop_instance_uid == reference.SOPInstanceUID
        assert record.study_instance_uid == reference.StudyInstanceUID
        assert record.series_instance_uid == reference.SeriesInstanceUID
        assert record.transfer_syntax == reference.file_meta.TransferSyntaxUID
        assert record.size == path.stat().st_size

    @pytest.mark.parametrize(
        ("name", "code"),
        [
            ("no_meta.dcm", ReasonCode.NOT_P10),
            ("README.txt", ReasonCode.NOT_P10),
            ("meta_missing_tsyntax.dcm", ReasonCode.NO_TRANSFER_SYNTAX),
            ("MR_truncated.dcm", ReasonCode.TRUNCATED),
            ("MR_small_padded.dcm", ReasonCode.PIXEL_DATA_SIZE_MISMATCH),
            ("JPEGLSNearLossless_08.dcm", ReasonCode.MISSING_UID),
        ],
    )
    def test_invalid_files_get_their_reason(self, name: str, code: ReasonCode) -> None:
        record = _check(PYDICOM_TEST_FILES / name)

        assert record.status is FileValidity.INVALID
        assert record.reason_code is code
        assert record.reason_message


class TestGeneratedFiles:
    def test_ct_slice_is_valid(self, tmp_path: Path) -> None:
        (path,) = write_ct_series(tmp_path, 1)
        record = _check(path)
        assert record.status is FileValidity.VALID
        assert record.series_number == "1"
        assert record.size == path.stat().st_size

    @pytest.mark.parametrize("code", list(BROKEN_MAKERS))
    def test_each_broken_maker_hits_its_rule(self, tmp_path: Path, code: str) -> None:
        path = BROKEN_MAKERS[code](tmp_path / "broken.dcm")
        record = _check(path)
        assert record.status is FileValidity.INVALID
        assert record.reason_code == code

    def test_missing_preamble_is_not_p10(self, tmp_path: Path) -> None:
        record = _check(write_without_preamble(tmp_path / "f.dcm"))
        assert record.reason_code is ReasonCode.NOT_P10

    @pytest.mark.parametrize(
        ("keyword", "limit"),
        [("StudyDescription", 256), ("StudyID", 256), ("PatientSex", 16), ("StudyTime", 28)],
    )
    def test_attribute_limits_are_inclusive(
        self, tmp_path: Path, keyword: str, limit: int
    ) -> None:
        at_limit = _check(write_with(tmp_path / "ok.dcm", **{keyword: "1" * limit}))
        over = _check(write_with(tmp_path / "long.dcm", **{keyword: "1" * (limit + 1)}))

        assert at_limit.status is FileValidity.VALID
        assert over.reason_code is ReasonCode.ATTRIBUTE_TOO_LONG
        assert keyword in (over.reason_message or "")

    def test_uid_over_256_characters_is_too_long(self, tmp_path: Path) -> None:
        record = _check(write_with(tmp_path / "f.dcm", SOPInstanceUID="1." + "2" * 255))
        assert record.reason_code is ReasonCode.ATTRIBUTE_TOO_LONG

    def test_odd_pixel_length_allows_one_pad_byte(self, tmp_path: Path) -> None:
        ds = ct_slice(series_spec("odd"), 0, rows=3, columns=3)
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = bytes(9)  # written padded to 10
        assert _check(write(ds, tmp_path / "odd.dcm")).status is FileValidity.VALID
        ds.PixelData = bytes(12)
        record = _check(write(ds, tmp_path / "long.dcm"))
        assert record.reason_code is ReasonCode.PIXEL_DATA_SIZE_MISMATCH

    def test_multiframe_size_counts_frames(self, tmp_path: Path) -> None:
        ds = ct_slice(series_spec("mf"), 0, rows=4, columns=4)
        ds.NumberOfFrames = 3
        ds.PixelData = bytes(4 * 4 * 2 * 3)
        assert _check(write(ds, tmp_path / "mf.dcm")).status is FileValidity.VALID
        ds.NumberOfFrames = 2
        record = _check(write(ds, tmp_path / "mf2.dcm"))
        assert record.reason_code is ReasonCode.PIXEL_DATA_SIZE_MISMATCH

    def test_header_longer_than_the_first_read(self, tmp_path: Path) -> None:
        ds = ct_slice(series_spec("long-header"), 0, rows=8, columns=8)
        ds.add_new(0x00091010, "OB", bytes(3 << 20))  # private, before Pixel Data
        path = write(ds, tmp_path / "long.dcm")
        record = _check(path)
        assert record.status is FileValidity.VALID, record.reason_message
        assert record.size == path.stat().st_size

    def test_missing_file_is_unreadable(self, tmp_path: Path) -> None:
        record = validate_file(SourceFile(str(tmp_path / "gone.dcm"), 1, "v", "gone.dcm"))
        assert record.reason_code is ReasonCode.UNREADABLE


class TestPhi:
    def test_phi_is_left_out_by_default(self, tmp_path: Path) -> None:
        (path,) = write_ct_series(tmp_path, 1, rows=8, columns=8)
        record = _check(path)
        assert (record.patient_name, record.patient_id, record.patient_birth_date) == (
            None, None, None,
        )

    def test_phi_on_opt_in(self, tmp_path: Path) -> None:
        (path,) = write_ct_series(tmp_path, 1, rows=8, columns=8)
        record = _check(path, include_phi=True)
        assert record.patient_name == "Doe^Jane"
        assert record.patient_id == "PID-0001"
        assert record.patient_birth_date == "19700101"


def test_findings_and_what_discovery_knew_make_a_whole_record(tmp_path: Path) -> None:
    """Workers send Findings; a field named differently from the record's
    would be dropped from every record built from them."""
    discovery = {"uri", "relative_path", "version"}
    assert set(Findings._fields) | discovery | {"sha256"} == {
        field.name for field in fields(ValidationRecord)
    }
    (path,) = write_ct_series(tmp_path, 1, rows=8, columns=8)
    record = _check(path)
    assert set(vars(record)) == {field.name for field in fields(ValidationRecord)}


def test_validation_leaves_no_cyclic_garbage(tmp_path: Path) -> None:
    """validate_files pauses the garbage collector while it works: safe only
    while validation, pydicom's fallback and every rejection included, makes
    no reference cycles. A fresh interpreter: other tests' threads would leave
    garbage of their own meanwhile."""
    write_ct_series(tmp_path / "s", 3, rows=8, columns=8)
    for code, make in BROKEN_MAKERS.items():
        make(tmp_path / "broken" / f"{code}.dcm")
    for name in ("CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "JPEG2000.dcm"):
        shutil.copy(PYDICOM_TEST_FILES / name, tmp_path / name)
    script = textwrap.dedent(
        f"""
        import gc
        from tasks.discover import iter_source
        from tasks.validate import validate_files

        files = list(iter_source({str(tmp_path)!r}))
        validate_files(files, workers=1)  # imports done, caches filled
        gc.collect()
        gc.disable()
        records = validate_files(files, workers=1)
        print(len(records), gc.collect())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).parents[2], env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr
    validated, unreachable = map(int, done.stdout.split())
    assert validated == 3 + len(BROKEN_MAKERS) + 4
    assert unreachable == 0


class TestValidateFiles:
    def test_duplicates_first_in_order_wins(self, tmp_path: Path) -> None:
        original = write_ct_series(tmp_path / "a", 1, rows=8, columns=8)[0]
        copy = write_duplicate_of(original, tmp_path / "b" / "copy.dcm")

        kept, duplicate = validate_files(iter_source(str(tmp_path)), workers=1)

        assert kept.uri == str(original) and kept.status is FileValidity.VALID
        assert duplicate.uri == str(copy)
        assert duplicate.status is FileValidity.DUPLICATE
        assert str(original) in (duplicate.reason_message or "")

    def test_invalid_first_copy_does_not_shadow_a_valid_one(self, tmp_path: Path) -> None:
        valid = write_ct_series(tmp_path, 1, rows=8, columns=8)[0]
        records = validate_files([_source(valid)], workers=1)
        invalid_copy = replace(records[0], uri="x", status=FileValidity.INVALID)
        result = mark_duplicates([invalid_copy, records[0]])
        assert result[1].status is FileValidity.VALID

    def test_process_pool_gives_the_same_records_in_order(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Chunks of chunk_size files, however fast: the duplicate's chunk is not
        # its original's, and chunks come back in several rounds.
        monkeypatch.setattr("tasks.validate._CHUNK_SECONDS", 0)
        series = write_ct_series(tmp_path / "s", 6, rows=8, columns=8)
        for code, make in BROKEN_MAKERS.items():
            make(tmp_path / "broken" / f"{code}.dcm")
        shutil.copy(PYDICOM_TEST_FILES / "CT_small.dcm", tmp_path / "ct.dcm")
        write_duplicate_of(series[0], tmp_path / "z" / "copy.dcm")  # a later chunk's
        files = list(iter_source(str(tmp_path)))

        serial = validate_files(files, workers=1)
        parallel = validate_files(iter(files), workers=2, chunk_size=3)

        assert parallel == serial
        assert [r.uri for r in parallel] == [f.uri for f in files]
        assert parallel[-1].status is FileValidity.DUPLICATE
        # Every verdict but the one the ledger gives after validation.
        assert {r.status for r in parallel} == set(FileValidity) - {FileValidity.ALREADY_IMPORTED}

    @pytest.mark.parametrize("workers", [1, 2])
    @pytest.mark.parametrize("enabled", [True, False])
    def test_leaves_the_garbage_collector_as_it_found_it(
        self, tmp_path: Path, workers: int, enabled: bool
    ) -> None:
        """The collector is paused while records are made, never left off."""
        files = list(iter_source(str(write_ct_series(tmp_path, 3, rows=8, columns=8)[0].parent)))
        if not enabled:
            gc.disable()
        try:
            validate_files(iter(files), workers=workers, chunk_size=1)
            assert gc.isenabled() is enabled
        finally:
            gc.enable()

    def test_reads_s3_objects_in_workers(self, tmp_path: Path, s3_bucket: str) -> None:
        paths = write_ct_series(tmp_path, 3, rows=8, columns=8)
        broken = BROKEN_MAKERS["not_p10"](tmp_path / "bad.dcm")
        s3 = boto3.client("s3")
        for path in [*paths, broken]:
            s3.upload_file(str(path), s3_bucket, f"src/{path.name}")

        records = validate_files(iter_source(f"s3://{s3_bucket}/src"), workers=2, chunk_size=2)

        by_name = {r.relative_path: r for r in records}
        assert by_name["bad.dcm"].reason_code is ReasonCode.NOT_P10
        for path in paths:
            assert by_name[path.name].status is FileValidity.VALID
            assert by_name[path.name].size == path.stat().st_size

    def test_each_call_uses_the_current_s3_endpoint(
        self, tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A filesystem kept from an earlier call would still aim at an endpoint
        that is gone (the local service of an earlier run)."""
        from moto.server import ThreadedMotoServer

        (path,) = write_ct_series(tmp_path, 1, rows=8, columns=8)
        session_endpoint = os.environ["AWS_ENDPOINT_URL_S3"]
        boto3.client("s3").upload_file(str(path), s3_bucket, "src/a.dcm")
        earlier = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        earlier.start()
        host, port = earlier.get_host_and_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://{host}:{port}")
        assert validate_files(iter_source(f"s3://{s3_bucket}/src"), workers=1)[0].is_valid
        earlier.stop()

        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", session_endpoint)
        (record,) = validate_files(iter_source(f"s3://{s3_bucket}/src"), workers=1)

        assert record.is_valid, record.reason_message

    def test_workers_use_the_callers_current_environment(
        self, tmp_path: Path, s3_bucket: str
    ) -> None:
        """Workers fork from a server started at the first call; the AWS
        endpoint they use must be the caller's at each call, not the server's.
        A fresh interpreter, so that the server starts under a dead endpoint."""
        local = write_ct_series(tmp_path / "local", 2, rows=8, columns=8)
        for path in local:
            boto3.client("s3").upload_file(str(path), s3_bucket, f"src/{path.name}")
        script = textwrap.dedent(
            f"""
            import os
            from tasks.discover import iter_source
            from tasks.validate import validate_files

            os.environ["AWS_ENDPOINT_URL_S3"] = "http://127.0.0.1:9"  # nothing listens
            validate_files(iter_source({str(tmp_path / "local")!r}), workers=2, chunk_size=1)
            os.environ["AWS_ENDPOINT_URL_S3"] = {os.environ["AWS_ENDPOINT_URL_S3"]!r}
            records = validate_files(
                iter_source("s3://{s3_bucket}/src"), workers=2, chunk_size=1
            )
            print([record.status.value for record in records])
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
            cwd=Path(__file__).parents[2], env=os.environ.copy(),
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "['valid', 'valid']"
