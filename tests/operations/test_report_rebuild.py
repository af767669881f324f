"""``dicom-import report``: any run's report written again from the ledger alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from cli.main import main
from config.settings import get_settings
from emulator.edge.server import LocalService
from emulator.samples import BROKEN_MAKERS, series_spec, write_ct_series, write_with
from flows.ingest import dicom_ingest
from tasks.ledger import RunLedger, ledger_url
from tests.operations.conftest import ingest_params

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def test_deleted_report_is_rebuilt_from_the_ledger(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source"
    write_ct_series(source / "a", 3, series_spec("rebuild-a"), 16, 16)
    write_ct_series(source / "b", 2, series_spec("rebuild-b", series_number=7), 16, 16)
    BROKEN_MAKERS["missing_uid"](source / "broken" / "no-series.dcm")
    # A leading zero: imported with a warning that validation expects.
    write_with(source / "warned" / "uid.dcm", SOPInstanceUID="1.2.03.4")
    result = dicom_ingest(ingest_params(tmp_path))
    assert result.counts["imported"] == 5 and result.counts["invalid"] == 1
    assert result.counts["imported_with_warnings"] == 1
    folder = Path(result.report_files_parquet).parent
    tables = {"files": folder / "files", "jobs": folder / "jobs.parquet"}
    originals = {name: pd.read_parquet(path) for name, path in tables.items()}
    assert originals["files"]["expected_warnings"].notna().sum() == 1
    # Derived, not kept: the ledger gives back what it is derived from.
    assert originals["files"]["viewer_path"].notna().sum() == 6
    csv = {name: (folder / f"{name}.csv").read_text() for name in ("files", "jobs")}
    for written in folder.iterdir():
        shutil.rmtree(written) if written.is_dir() else written.unlink()

    code = main(["report", "--run", str(result.flow_run_id),
                 "--report-location", str(tmp_path / "reports")])

    out, err = capsys.readouterr()
    assert code == 0 and not err
    assert str(folder / "files") in out and str(folder / "jobs.csv") in out
    for name, original in originals.items():
        rebuilt = pd.read_parquet(tables[name])
        assert list(rebuilt.columns) == list(original.columns)
        for column in original.columns:
            pd.testing.assert_series_equal(rebuilt[column], original[column], obj=column)
        assert (folder / f"{name}.csv").read_text() == csv[name]


def test_rebuilt_report_goes_where_asked(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_ct_series(tmp_path / "source" / "a", 2, series_spec("rebuild-out"), 16, 16)
    result = dicom_ingest(ingest_params(tmp_path))
    # <time>-<the flow run ID's first 8 characters>: what an operator has at hand.
    folder = Path(result.report_files_parquet).parent.name
    assert str(result.flow_run_id).startswith(folder[-8:])

    code = main(["report", "--run", folder[-8:], "--report-location",
                 str(tmp_path / "reports"), "--output", str(tmp_path / "copy")])

    assert code == 0, capsys.readouterr().err
    rebuilt = pd.read_parquet(tmp_path / "copy" / "files")
    pd.testing.assert_frame_equal(rebuilt, pd.read_parquet(result.report_files_parquet))


def test_unknown_run_is_one_clear_line(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_ct_series(tmp_path / "source" / "a", 1, series_spec("rebuild-none"), 16, 16)
    dicom_ingest(ingest_params(tmp_path))

    code = main(["report", "--run", "no-such-run", "--report-location",
                 str(tmp_path / "reports")])
    missing_ledger = main(["report", "--run", "no-such-run", "--report-location",
                           str(tmp_path / "elsewhere")])

    out, err = capsys.readouterr()
    assert code == missing_ledger == 2 and not out
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err
    assert "no run no-such-run" in lines[0]
    assert "no ledger at" in lines[1]


def test_a_run_id_start_shared_by_runs_is_refused_naming_them(
    ledger_backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ledger_url(get_settings().ledger_url, str(tmp_path / "reports"))
    shared = "5eed0000-"
    for run_id in (f"{shared}1111", f"{shared}2222", "5eed1111-3333"):
        RunLedger(url, run_id, "store").start_run("dicom-ingest", str(tmp_path))

    code = main(["report", "--run", shared, "--report-location", str(tmp_path / "reports")])

    out, err = capsys.readouterr()
    assert code == 2 and not out
    (line,) = err.splitlines()
    assert line.startswith(f"dicom-import report: 2 runs have an ID starting with {shared}: "
                           f"{shared}1111 (dicom-ingest, started ")
    assert f"{shared}2222 (dicom-ingest, started " in line and "5eed1111" not in line
