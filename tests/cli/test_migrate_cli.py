"""``dicom-import migrate`` refuses what it cannot do in one line, exit status 2,
before anything is read or created."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from cli.exit_status import ExitStatus
from cli.main import main


def _migrate(tmp_path: Path, *extra: str) -> list[str]:
    return ["migrate", str(tmp_path), "--datastore", "store", "--staging-prefix",
            "s3://bucket/staging", "--output-prefix", "s3://bucket/output",
            "--report-location", str(tmp_path / "reports"), *extra]


def test_a_migration_needs_a_prefect_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with temporary_settings({PREFECT_API_URL: ""}):
        code = main(_migrate(tmp_path))
    out, err = capsys.readouterr()
    assert code == ExitStatus.ERROR
    assert err.count("\n") == 1 and "PREFECT_API_URL" in err and "Traceback" not in out + err
    assert not (tmp_path / "reports").exists()


def test_options_are_checked_by_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(_migrate(tmp_path, "--max-jobs-in-flight", "101"))
    _, err = capsys.readouterr()
    assert code == ExitStatus.ERROR
    assert err.startswith("dicom-import migrate: --max-jobs-in-flight:") and err.count("\n") == 1
