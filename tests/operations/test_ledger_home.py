"""One ledger per user, wherever a command runs: the default report location
is the user's data folder (here the test's own, tests/conftest.py), and a
command that reads the ledger (report, verify, retry, reconcile) never begins
one: where there is none it says where it looked, exit 2, and makes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from cli.main import main
from emulator.edge.server import LocalService
from emulator.samples import series_spec, write_ct_series
from flows.ingest import dicom_ingest
from flows.parameters import IngestParameters
from tests.operations.conftest import BUCKET, DATASTORE, ingest_params, medical_imaging

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

READING_COMMANDS = ["report", "verify", "retry", "reconcile"]


def _default_reports(user_data_folder: Path) -> Path:
    return user_data_folder / "dicom-import" / "reports"


def _no_such_image_set(tmp_path: Path) -> Path:
    """A decisions file whose decision is refused (no such image set): it
    changes nothing, and needs the ledger all the same."""
    path = tmp_path / "decisions.json"
    path.write_text(json.dumps({"0" * 32: "promote"}))
    return path


def _empty_folder(path: Path) -> Path:
    path.mkdir()
    return path


def test_commands_from_another_folder_use_the_same_ledger(
    service: LocalService, tmp_path: Path, user_data_folder: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    first, elsewhere = _empty_folder(tmp_path / "first"), _empty_folder(tmp_path / "elsewhere")
    write_ct_series(tmp_path / "source" / "a", 2, series_spec("ledger-home"), 16, 16)
    decisions = _no_such_image_set(tmp_path)
    monkeypatch.chdir(first)
    given = ingest_params(tmp_path).model_dump(exclude={"report_location"})
    result = dicom_ingest(IngestParameters(**given))
    assert result.counts["imported"] == 2
    assert (_default_reports(user_data_folder) / "ledger.sqlite").is_file()
    monkeypatch.chdir(elsewhere)

    assert main(["report", "--run", str(result.flow_run_id)]) == 0
    assert main(["verify", "--run", str(result.flow_run_id)]) == 0
    # The decision is refused (1), not the run for want of a ledger (2).
    assert main(["reconcile", str(decisions), "--datastore", DATASTORE, "--apply"]) == 1

    assert "Traceback" not in "".join(capsys.readouterr())
    assert list(first.iterdir()) == [] and list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("command", READING_COMMANDS)
def test_a_command_that_reads_the_ledger_never_begins_one(
    ledger_backend: str, service: LocalService, tmp_path: Path, user_data_folder: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str,
) -> None:
    # retry and reconcile resolve the data store before they open the ledger.
    medical_imaging().create_datastore(datastoreName=DATASTORE)
    argv = {
        "report": ["report", "--run", "some-run"],
        "verify": ["verify", "--job", "some-job"],
        "retry": ["retry", "--datastore", DATASTORE, "--staging-prefix",
                  f"s3://{BUCKET}/staging", "--output-prefix", f"s3://{BUCKET}/output"],
        "reconcile": ["reconcile", str(_no_such_image_set(tmp_path)), "--datastore", DATASTORE,
                      "--apply"],
    }[command]
    monkeypatch.chdir(_empty_folder(tmp_path / "cwd"))

    code = main(argv)

    out, err = capsys.readouterr()
    (line,) = [line for line in err.splitlines() if line.startswith(f"dicom-import {command}:")]
    assert code == 2 and "Traceback" not in out + err
    if ledger_backend == "sqlite":
        ledger = _default_reports(user_data_folder) / "ledger.sqlite"
        assert line == (f"dicom-import {command}: There is no ledger at {ledger}: give the "
                        "report location the runs used (--report-location), or set "
                        "DICOM_IMPORT_LEDGER_URL.")
        assert not (user_data_folder / "dicom-import").exists()
    else:
        assert line.startswith(f"dicom-import {command}: There is no ledger in postgresql")
        assert "DICOM_IMPORT_LEDGER_URL" in line
        engine = sa.create_engine(os.environ["DICOM_IMPORT_LEDGER_URL"])
        assert sa.inspect(engine).get_table_names() == []
        engine.dispose()
    assert list((tmp_path / "cwd").iterdir()) == []


def test_report_from_a_location_that_does_not_exist_makes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["report", "--run", "some-run", "--report-location",
                 str(tmp_path / "nowhere" / "reports")])

    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"dicom-import report: There is no ledger at "
                   f"{tmp_path / 'nowhere' / 'reports' / 'ledger.sqlite'}: give the report "
                   "location the runs used (--report-location), or set "
                   "DICOM_IMPORT_LEDGER_URL.\n")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("command", ["ingest", "migrate", *READING_COMMANDS])
def test_help_shows_the_default_report_location(
    user_data_folder: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])

    # argparse wraps help at spaces and after hyphens: compare without the breaks.
    assert str(_default_reports(user_data_folder)) in "".join(capsys.readouterr().out.split())
