"""``dicom-import ingest`` on bad input: a clear one-line error or report rows
that say what went wrong, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest

from cli.main import main
from emulator.edge.server import LocalService
from emulator.samples import series_spec, write_ct_series, write_not_dicom, write_truncated
from flows.parameters import IngestParameters
from tests.mutated_dicom import write_mutants

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

BUCKET = "cli-bucket"


@pytest.fixture
def service(local_aws: LocalService) -> LocalService:
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return local_aws


def ingest(source: Path | str, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "ingest",
        str(source),
        "--datastore",
        "cli-store",
        "--create-datastore",
        "--staging-prefix",
        f"s3://{BUCKET}/staging",
        "--output-prefix",
        f"s3://{BUCKET}/output",
        "--report-location",
        str(tmp_path / "reports"),
        "--poll-interval-seconds",
        "0.2",
        "--validation-workers",
        "1",
        *extra,
    ]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def file_report(tmp_path: Path) -> pd.DataFrame:
    parts = (tmp_path / "reports").rglob("files/part-*.parquet")
    latest = max(parts, key=lambda p: p.stat().st_mtime).parent
    return pd.read_parquet(latest)


def test_empty_folder(service: Any, tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run(ingest(tmp_path / "empty", tmp_path), capsys)
    assert code == 2
    assert "empty" in err.lower() and str(tmp_path / "empty") in err


def test_missing_folder(service: Any, tmp_path: Path, capsys: Any) -> None:
    code, _, err = run(ingest(tmp_path / "nowhere", tmp_path), capsys)
    assert code == 2
    assert str(tmp_path / "nowhere") in err


def test_bad_files_become_report_rows(service: Any, tmp_path: Path, capsys: Any) -> None:
    source = tmp_path / "in"
    good = write_ct_series(source / "ct", 2, series_spec("cli-good"), rows=16, columns=16)
    write_not_dicom(source / "notes.txt")
    write_truncated(source / "cut.dcm")
    code, out, err = run(ingest(source, tmp_path), capsys)
    assert code == 0
    assert "imported" in out and "invalid" in out
    assert "Created data store cli-store (" in err
    report = file_report(tmp_path).set_index("source_uri")
    assert set(report.loc[[str(p) for p in good], "status"]) == {"imported"}
    assert report.loc[str(source / "notes.txt"), "reason_code"] == "not_p10"
    assert report.loc[str(source / "cut.dcm"), "status"] == "invalid"
    assert report.loc[str(source / "cut.dcm"), "reason_code"] == "truncated"


@pytest.mark.timeout(600)
def test_no_file_stops_the_run(service: Any, tmp_path: Path, capsys: Any) -> None:
    """Good files among a few hundred broken ones (tests.mutated_dicom): each
    broken file ends in the report with its reason, and the rest is imported."""
    source = tmp_path / "in"
    good = write_ct_series(source / "good", 20, series_spec("cli-odd"), rows=8, columns=8)
    mutants = write_mutants(source / "mutants", 300, seed=4242)
    code, _, err = run(ingest(source, tmp_path), capsys)
    assert code in (0, 1), err
    report = file_report(tmp_path)
    assert sorted(report["source_uri"]) == sorted(str(p) for p in good + mutants)
    statuses = report.set_index("source_uri")["status"]
    assert set(statuses[[str(p) for p in good]]) == {"imported"}
    invalid = report[report["status"] == "invalid"]
    assert len(invalid) > 100
    assert invalid["reason_code"].notna().all() and invalid["error_message"].notna().all()
    assert not report["error_message"].str.contains("Doe^Jane", regex=False).any()


def test_invalid_option(service: Any, tmp_path: Path, capsys: Any) -> None:
    code, _, err = run(ingest(tmp_path, tmp_path, "--max-files-per-job", "0"), capsys)
    assert code == 2
    assert "--max-files-per-job" in err and "max_files_per_job" not in err


def test_help_lists_every_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["ingest", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name, field in IngestParameters.model_fields.items():
        typed = not (isinstance(field.json_schema_extra, dict)
                     and field.json_schema_extra.get("set_by_flows"))
        if name != "source":
            assert (f"--{name.replace('_', '-')}" in out) is typed, name
