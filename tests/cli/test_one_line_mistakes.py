"""A mistake in the settings or on the command line is one line naming where
it is (the settings file's line and column, the variable, the option as it
is typed), exit status 2, before anything runs; and the operator's own
settings file is never committed."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import main
from config.settings import get_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The settings file the command reads, with no DICOM_IMPORT_* variable
    besides; settings are read once per process, so read afresh."""
    for name in os.environ:
        if name.startswith("DICOM_IMPORT_"):
            monkeypatch.delenv(name)
    path = tmp_path / "dicom-import.toml"
    monkeypatch.setenv("DICOM_IMPORT_CONFIG", str(path))
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def one_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2 and not out
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err.strip()


def test_a_syntax_error_names_the_file_line_and_column(
    settings_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings_file.write_text('datastore = "research-ct"\nmax_files_per_job = \n')

    line = one_line(capsys, "ingest", str(tmp_path))

    assert line == (f"dicom-import ingest: settings file {settings_file}: line 2, column 21: "
                    "Invalid value")


def test_an_invalid_value_names_the_files_key_not_an_option(
    settings_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings_file.write_text('max_files_per_job = 0\nverify = "pixel"\n')

    line = one_line(capsys, "verify", "--run", "x")

    assert line.startswith(f"dicom-import verify: settings file {settings_file}: "
                           "max_files_per_job: Input should be greater than or equal to 1; "
                           "verify: Input should be ")
    assert "--max-files-per-job" not in line


def test_an_invalid_variable_is_named(
    settings_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DICOM_IMPORT_POLL_INTERVAL_SECONDS", "soon")

    line = one_line(capsys, "retry")

    assert line.startswith("dicom-import retry: DICOM_IMPORT_POLL_INTERVAL_SECONDS: Input "
                           "should be a valid number")


def test_options_a_rule_needs_are_named_as_typed(
    settings_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert one_line(capsys, "ingest", str(tmp_path)) == (
        "dicom-import ingest: --datastore, --staging-prefix, --output-prefix must be set to "
        "import (or set --dry-run).")
    assert one_line(capsys, "verify") == (
        "dicom-import verify: give one of --run, --job, or --datastore with --source.")
    assert one_line(capsys, "reconcile", "decisions.json") == (
        "dicom-import reconcile: --datastore must be set.")
    # A migration has no dry run to offer.
    assert one_line(capsys, "migrate", str(tmp_path)) == (
        "dicom-import migrate: --datastore, --staging-prefix, --output-prefix must be set to "
        "import.")


def test_an_invalid_choice_lists_the_valid_ones(
    settings_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["ingest", str(tmp_path), "--verify", "pixel"])
    out, err = capsys.readouterr()
    assert done.value.code == 2 and not out and err.count("\n") == 1
    assert err.startswith("dicom-import ingest: argument --verify: invalid choice: 'pixel' "
                          "(choose from 'metadata', 'pixels', 'off')")


def test_the_settings_file_is_not_committed() -> None:
    done = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "dicom-import.toml"],
                          check=False)
    if done.returncode == 128:
        pytest.skip("not a git checkout")
    assert done.returncode == 0, "dicom-import.toml is not in .gitignore"
