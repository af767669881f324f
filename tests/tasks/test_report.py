from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from import_rules.codes import ReasonCode
from tasks.batch import make_batches
from tasks.manifest import read_job_output
from tasks.poll import JobOutcome
from tasks.report import (
    FILE_COLUMNS,
    PHI_COLUMNS,
    ReportWriter,
    build_file_report,
    build_job_summary,
    status_counts,
    write_report,
)
from tasks.stage import StagedFile
from tasks.statuses import FileStatus, FileValidity, JobStatus, StageAction
from tasks.validate import ValidationRecord
from tests.import_output import (
    DS,
    failure_row,
    image_set,
    success_row,
    warning_row,
    write_job_output,
)

IMAGE_SET = "c" * 32


def _valid(name: str, series: str, size: int = 10) -> ValidationRecord:
    return ValidationRecord(
        uri=f"/src/{name}", relative_path=name, size=size, status=FileValidity.VALID,
        sop_instance_uid=f"1.{len(name)}.{series}.{name.count('x')}",
        study_instance_uid="1.1", series_instance_uid=series, sha256=name,
        patient_name="Doe^Jane", patient_id="P1",
    )


@pytest.fixture
def scenario(tmp_path: Path):
    """Three jobs (completed, failed, timed out) plus invalid and duplicate files."""
    completed = [_valid(n, "1.2.1") for n in ["ok", "warn", "fail", "missing"]]
    # 35 bytes against a 40-byte quota: each of these gets a job of its own.
    failed = [_valid("jobfail", "1.2.2", 35)]
    slow = [_valid("slow", "1.2.3", 35)]
    unstaged = [_valid("unstaged", "1.2.4", 35)]
    invalid = ValidationRecord("/src/bad", "bad", 3, FileValidity.INVALID,
                               ReasonCode.NOT_P10, "Not a DICOM Part 10 file.")
    duplicate = ValidationRecord("/src/dup", "dup", 10, FileValidity.DUPLICATE,
                                 ReasonCode.DUPLICATE_SOP_INSTANCE, "kept /src/ok")
    records = [*completed, *failed, *slow, *unstaged, invalid, duplicate]
    batches = make_batches(records, max_files=4, max_bytes=40)
    batch_of = {f.uri: b.batch_id for b in batches for f in b.files}
    staged = [
        StagedFile(r.uri, batch_of[r.uri], f"st/{batch_of[r.uri]}/{r.relative_path}",
                   StageAction.FAILED if r is unstaged[0] else StageAction.UPLOADED,
                   "AccessDenied" if r is unstaged[0] else None)
        for r in [*completed, *failed, *slow, *unstaged]
    ]
    key = {s.source_uri: s.key for s in staged}
    done = batch_of["/src/ok"]
    output = write_job_output(
        tmp_path / "out",
        success=[success_row(key["/src/ok"], IMAGE_SET)],
        warning=[warning_row(key["/src/warn"], IMAGE_SET, 0xB000, "COERCION_OF_DATA_ELEMENTS")],
        failure=[failure_row(key["/src/fail"], "ValidationException", "bad UID")],
        image_sets=[image_set(IMAGE_SET, 2)],
    )
    outcomes = [
        JobOutcome(done, DS, "job-done", JobStatus.COMPLETED, output_s3_uri=str(output)),
        JobOutcome(batch_of["/src/jobfail"], DS, "job-failed", JobStatus.FAILED,
                   "Input unreadable"),
        JobOutcome(batch_of["/src/slow"], DS, "job-slow", JobStatus.TIMED_OUT, "stopped"),
        JobOutcome(batch_of["/src/unstaged"], DS, "job-x", JobStatus.COMPLETED),
    ]
    outputs = {done: read_job_output(str(output)), batch_of["/src/unstaged"]: "no manifest"}
    return records, batches, staged, outcomes, outputs


def _by_source(report: pd.DataFrame) -> dict[str, dict]:
    return {row["source_uri"]: row for row in report.to_dict("records")}


def test_every_file_gets_one_final_status(scenario) -> None:
    report = build_file_report(*scenario)
    rows = _by_source(report)

    assert len(report) == len(scenario[0])
    assert {uri: row["status"] for uri, row in rows.items()} == {
        "/src/ok": FileStatus.IMPORTED,
        "/src/warn": FileStatus.IMPORTED_WITH_WARNINGS,
        "/src/fail": FileStatus.IMPORT_FAILED,
        "/src/missing": FileStatus.IMPORT_FAILED,
        "/src/jobfail": FileStatus.JOB_FAILED,
        "/src/slow": FileStatus.TIMED_OUT,
        "/src/unstaged": FileStatus.IMPORT_FAILED,
        "/src/bad": FileStatus.INVALID,
        "/src/dup": FileStatus.DUPLICATE,
    }
    assert rows["/src/ok"]["image_set_id"] == IMAGE_SET
    assert rows["/src/ok"]["image_set_version"] == 2
    assert rows["/src/ok"]["is_primary"] is True
    assert rows["/src/warn"]["warning_codes"] == "COERCION_OF_DATA_ELEMENTS(0xB000)"
    assert rows["/src/fail"]["error_type"] == "ValidationException"
    assert rows["/src/fail"]["error_message"] == "bad UID"
    assert rows["/src/fail"]["image_set_id"] is None or pd.isna(rows["/src/fail"]["image_set_id"])
    assert rows["/src/missing"]["error_type"] == "MissingFromOutput"
    assert "missing from its output" in rows["/src/missing"]["error_message"]
    assert rows["/src/jobfail"]["error_message"] == "Input unreadable"
    assert rows["/src/jobfail"]["job_id"] == "job-failed"
    assert rows["/src/unstaged"]["error_type"] == "StagingError"
    assert rows["/src/bad"]["reason_code"] == "not_p10"
    assert rows["/src/dup"]["error_message"] == "kept /src/ok"


def test_unreadable_output_marks_files_output_missing(scenario) -> None:
    """Not import_failed: nothing says HealthImaging refused the file."""
    records, batches, staged, outcomes, outputs = scenario
    staged = [StagedFile(s.source_uri, s.batch_id, s.key, StageAction.UPLOADED)
              for s in staged]

    rows = _by_source(build_file_report(records, batches, staged, outcomes, outputs))

    assert rows["/src/unstaged"]["status"] == FileStatus.OUTPUT_MISSING
    assert rows["/src/unstaged"]["error_type"] == "ManifestError"
    assert rows["/src/unstaged"]["error_message"] == "no manifest"


def test_dry_run_leaves_valid_files_validated(scenario) -> None:
    records, batches, *_ = scenario
    report = build_file_report(records, batches, [], [], {})
    assert status_counts(report)["validated"] == 7
    assert status_counts(report)["invalid"] == 1


def test_phi_columns_only_on_opt_in(scenario: tuple[Any, Any, Any, Any, Any]) -> None:
    without = build_file_report(*scenario)
    with_phi = build_file_report(*scenario, include_phi=True)

    assert list(without.columns) == FILE_COLUMNS
    assert not set(PHI_COLUMNS) & set(without.columns)
    assert _by_source(with_phi)["/src/ok"]["patient_name"] == "Doe^Jane"


def test_job_summary_counts_files_per_job(scenario) -> None:
    _, batches, _, outcomes, outputs = scenario
    files = build_file_report(*scenario)

    jobs = build_job_summary(batches, outcomes, outputs, files)

    done = jobs.set_index("job_id").loc["job-done"]
    assert (done["imported"], done["imported_with_warnings"], done["import_failed"]) == (1, 1, 2)
    assert done["files"] == 4 and done["job_status"] == "COMPLETED"
    assert done["imported_files"] == 1
    assert len(jobs) == len(batches)


def test_writes_parquet_and_csv(scenario, tmp_path: Path) -> None:
    _, batches, _, outcomes, outputs = scenario
    files = build_file_report(*scenario)
    jobs = build_job_summary(batches, outcomes, outputs, files)

    paths = write_report(files, jobs, str(tmp_path / "report"))

    round_trip = pd.read_parquet(paths.files_parquet)
    assert list(round_trip.columns) == FILE_COLUMNS
    assert len(round_trip) == len(files)
    assert paths.files_csv is not None
    assert len(pd.read_csv(paths.files_csv)) == len(files)
    assert len(pd.read_parquet(paths.jobs_parquet)) == len(jobs)
    assert Path(paths.jobs_csv).exists()


def test_a_run_past_the_csv_limit_keeps_every_row_in_parquet_only(
    scenario, tmp_path: Path
) -> None:
    """Windows add parts; once the run has more rows than a spreadsheet takes,
    no CSV is written (README: the CSV is for runs small enough to open)."""
    _, batches, _, outcomes, outputs = scenario
    files = build_file_report(*scenario)
    jobs = build_job_summary(batches, outcomes, outputs, files)
    small, large = ReportWriter(str(tmp_path / "small"), csv_rows=len(files)), \
        ReportWriter(str(tmp_path / "large"), csv_rows=len(files) * 2 - 1)
    for writer in (small, large):
        writer.add_files(files)
    large.add_files(files)

    kept, dropped = small.close(jobs, {}), large.close(jobs, {})

    assert kept.files_csv is not None and len(pd.read_csv(kept.files_csv)) == len(files)
    assert dropped.files_csv is None
    assert not (tmp_path / "large" / "files.csv").exists()
    assert len(list((tmp_path / "large" / "files").glob("part-*.parquet"))) == 2
    assert len(pd.read_parquet(dropped.files_parquet)) == 2 * len(files)
    assert large.counts == {k: 2 * v for k, v in status_counts(files).items()}


def test_writes_to_s3(scenario, s3_bucket: str) -> None:
    _, batches, _, outcomes, outputs = scenario
    files = build_file_report(*scenario)
    jobs = build_job_summary(batches, outcomes, outputs, files)

    paths = write_report(files, jobs, f"s3://{s3_bucket}/reports/run")

    assert paths.files_parquet == f"s3://{s3_bucket}/reports/run/files"
    assert len(pd.read_parquet(paths.files_parquet)) == len(files)
    import boto3

    body = boto3.client("s3").get_object(Bucket=s3_bucket, Key="reports/run/files.csv")
    assert body["Body"].read().startswith(b"source_uri,")


def _parquet_dies_midway(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process is killed (here: the writer fails) after some bytes went out."""

    def write_some_then_fail(table, out, *args, **kwargs) -> None:
        out.write(b"PAR1 partial")
        raise KeyboardInterrupt("killed while writing the report")

    monkeypatch.setattr(pq, "write_table", write_some_then_fail)


def test_report_killed_while_written_leaves_no_torn_file(
    scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, batches, _, outcomes, outputs = scenario
    files = build_file_report(*scenario)
    jobs = build_job_summary(batches, outcomes, outputs, files)
    fresh, earlier = tmp_path / "fresh", tmp_path / "earlier"
    previous = write_report(files.head(2), jobs, str(earlier))
    _parquet_dies_midway(monkeypatch)

    for folder in (fresh, earlier):
        with pytest.raises(KeyboardInterrupt):
            write_report(files, jobs, str(folder))

    assert list((fresh / "files").iterdir()) == []  # no part, no temporary file either
    monkeypatch.undo()
    assert len(pd.read_parquet(previous.files_parquet)) == 2  # the earlier report, intact
    assert sorted(p.name for p in earlier.iterdir()) == [
        "files", "files.csv", "jobs.csv", "jobs.parquet", "summary.json"]


def test_report_killed_while_written_to_s3_leaves_no_object(
    scenario, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    _, batches, _, outcomes, outputs = scenario
    files = build_file_report(*scenario)
    jobs = build_job_summary(batches, outcomes, outputs, files)
    _parquet_dies_midway(monkeypatch)

    with pytest.raises(KeyboardInterrupt):
        write_report(files, jobs, f"s3://{s3_bucket}/reports/run")

    listed = boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="reports/")
    assert listed.get("KeyCount", 0) == 0


def test_warnings_validation_expected_are_reported(scenario) -> None:
    """A file the import takes with a warning is valid; the report says which
    warning validation expected, next to what HealthImaging said."""
    records, *rest = scenario
    expected = replace(records[0], expected_warnings="INVALID_UID_FORMAT(0xB201)")

    rows = _by_source(build_file_report([expected, *records[1:]], *rest))

    assert rows["/src/ok"]["expected_warnings"] == "INVALID_UID_FORMAT(0xB201)"
    assert rows["/src/ok"]["status"] == FileStatus.IMPORTED
    assert pd.isna(rows["/src/bad"]["expected_warnings"])


def test_each_imported_file_says_where_the_viewer_opens_its_study(tmp_path: Path) -> None:
    """The study for a primary image set; the image set itself for one that
    is not, so a reviewer can look before reconciling. Nothing for a file in
    no image set."""
    records = [_valid("primary", "1.2.1"), _valid("apart", "1.2.1"), _valid("failed", "1.2.1")]
    batches = make_batches(records, max_files=4, max_bytes=100)
    staged = [StagedFile(r.uri, batches[0].batch_id, f"st/{r.relative_path}",
                         StageAction.UPLOADED) for r in records]
    apart = "d" * 32
    output = write_job_output(
        tmp_path / "out",
        success=[success_row("st/primary", IMAGE_SET), success_row("st/apart", apart, False)],
        failure=[failure_row("st/failed", "ValidationException", "bad UID")],
        image_sets=[image_set(IMAGE_SET), image_set(apart, primary=False)])
    outcome = JobOutcome(batches[0].batch_id, DS, "job", JobStatus.COMPLETED,
                         output_s3_uri=str(output))

    rows = _by_source(build_file_report(records, batches, staged, [outcome],
                                        {batches[0].batch_id: read_job_output(str(output))}))

    assert rows["/src/primary"]["viewer_path"] == "/viewer?StudyInstanceUIDs=1.1"
    assert rows["/src/apart"]["viewer_path"] == f"/viewer?StudyInstanceUIDs=1.1&imageSetId={apart}"
    assert rows["/src/failed"]["viewer_path"] is None
