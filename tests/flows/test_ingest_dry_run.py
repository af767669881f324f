from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from emulator.samples import BROKEN_MAKERS, series_spec, write_ct_series
from flows.ingest import dicom_ingest
from flows.parameters import IngestParameters
from tasks.report import FILE_COLUMNS


class TestParameters:
    def test_import_needs_datastore_and_prefixes(self) -> None:
        with pytest.raises(ValidationError, match="datastore, staging_prefix, output_prefix"):
            IngestParameters(source="/data", datastore=None, staging_prefix=None,
                             output_prefix=None)

    def test_prefixes_must_be_s3(self) -> None:
        with pytest.raises(ValidationError, match="staging_prefix must be an s3:// URI"):
            IngestParameters(source="/data", datastore="ds", staging_prefix="/tmp/x",
                             output_prefix="s3://b/out")

    def test_defaults_come_from_settings(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from config.settings import get_settings

        monkeypatch.setenv("DICOM_IMPORT_MAX_FILES_PER_JOB", "123")
        get_settings.cache_clear()
        try:
            params = IngestParameters(source="/data", dry_run=True)
        finally:
            get_settings.cache_clear()
        assert params.max_files_per_job == 123

    def test_schema_describes_every_field(self) -> None:
        schema = IngestParameters.model_json_schema()
        assert all(field.get("description") for field in schema["properties"].values())


@pytest.mark.usefixtures("prefect_harness")
def test_dry_run_validates_and_reports_without_aws(tmp_path: Path) -> None:
    source = tmp_path / "src"
    write_ct_series(source / "a", 3, spec=series_spec("dry-a"), rows=16, columns=16)
    BROKEN_MAKERS["not_p10"](source / "junk.txt")

    result = dicom_ingest(IngestParameters(
        source=str(source), dry_run=True, report_location=str(tmp_path / "reports"),
        max_files_per_job=2,
    ))

    assert result.files == 4 and result.jobs == 0
    assert result.counts["validated"] == 3 and result.counts["invalid"] == 1
    report = pd.read_parquet(result.report_files_parquet)
    assert list(report.columns) == FILE_COLUMNS
    assert report["batch_id"].notna().sum() == 3
    assert report["batch_id"].nunique() == 2
