"""``dicom-import demo`` as ``make demo`` runs it: a fresh process, offline,
on the embedded local service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cli.main import main
from emulator.samples import write_demo_corpus

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def demo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``dicom-import demo`` run from ``cwd``, as ``make demo`` runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PREFECT_HOME=str(cwd / "prefect-home"), PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "cli", "demo", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    return done


def statuses_by_file(folder: Path) -> dict[Path, str]:
    [files] = {p.parent for p in (folder / "reports").rglob("files/part-*.parquet")}
    report = pd.read_parquet(files)
    assert "patient_name" not in report.columns
    return {
        Path(uri).relative_to(folder / "incoming"): status
        for uri, status in zip(report["source_uri"], report["status"], strict=True)
    }


def expected_statuses(folder: Path, slices: int) -> dict[Path, str]:
    expected = write_demo_corpus(folder, slices)
    return {Path(p).relative_to(folder): s for p, s in expected.items()}


@pytest.mark.heavy(minutes=3)
def test_demo_accounts_for_every_sample_file_and_runs_again(
    tmp_path: Path, user_data_folder: Path
) -> None:
    done = demo(tmp_path)
    assert "3 import jobs" in done.stdout
    assert done.stdout.rstrip().endswith(
        "dicom-import view --local-data-dir demo-output/local-state --datastore "
        "dicom-import-demo")
    output = tmp_path / "demo-output"
    assert statuses_by_file(output) == expected_statuses(tmp_path / "expected", 12)
    assert f"\nThe demo's reports and ledger: {output / 'reports'}\n" in done.stdout
    # Its ledger is its own: the user's data folder is left alone.
    assert not (user_data_folder / "dicom-import").exists()

    # The folder is the demo's own now: a rerun replaces what it wrote, only that.
    (output / "notes.txt").write_text("mine")
    demo(tmp_path, "--slices", "1")
    assert statuses_by_file(output) == expected_statuses(tmp_path / "expected-1", 1)
    assert (output / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("folder", ["given", "."])
def test_demo_refuses_a_folder_it_did_not_write(
    folder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mine = tmp_path / "given" / "reports" / "mine.csv"
    mine.parent.mkdir(parents=True)
    mine.write_text("precious")
    monkeypatch.chdir(tmp_path / "given")
    before = sorted((tmp_path / "given").rglob("*"))

    code = main(["demo", "--folder", str(tmp_path / "given") if folder == "given" else folder])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("dicom-import demo: ") and err.count("\n") == 1
    assert "not empty" in err and str(tmp_path / "given") in err
    assert sorted((tmp_path / "given").rglob("*")) == before
    assert mine.read_text() == "precious"
