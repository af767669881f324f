"""``dicom-import demo`` as ``make demo`` runs it: a fresh process, offline,
on the embedded local service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from emulator.samples import write_demo_corpus

pytestmark = pytest.mark.slow


def test_demo_accounts_for_every_sample_file(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    done = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--folder", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert "3 import jobs" in done.stdout

    expected = write_demo_corpus(tmp_path / "expected")
    by_name = {Path(p).relative_to(tmp_path / "expected"): s for p, s in expected.items()}
    report = pd.read_parquet(next((tmp_path / "demo" / "reports").rglob("files.parquet")))
    got = {
        Path(uri).relative_to(tmp_path / "demo" / "incoming"): status
        for uri, status in zip(report["source_uri"], report["status"], strict=True)
    }
    assert got == by_name
    assert "patient_name" not in report.columns
