"""STOW-RS as a landing path, through the flows against the local service."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from emulator.edge.server import LocalService
from emulator.samples import series_spec, write_ct_series
from flows.ingest import dicom_ingest
from tests.operations.conftest import ingest_params

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def test_smoke(service: LocalService, tmp_path: Path) -> None:
    write_ct_series(tmp_path / "source" / "a", 3, series_spec("stow-a"), 16, 16)
    result = dicom_ingest(ingest_params(tmp_path, landing="stow"))
    report = pd.read_parquet(result.report_files_parquet)
    print(report.T)
    assert set(report["status"]) == {"imported"}
