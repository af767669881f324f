"""A run that dies after its import jobs started, then the same run again:
nothing is imported twice and no file is lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
from botocore.config import Config

import flows.ingest
from emulator.edge.server import LocalService
from emulator.samples import series_spec, write_ct_series
from flows.ingest import dicom_ingest
from flows.parameters import IngestParameters
from tasks.manifest import job_outputs

# Each test on both ledger backends: SQLite, and PostgreSQL as machines share it.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness", "ledger_backend")]

BUCKET = "killed"


@pytest.fixture
def service(local_aws: LocalService) -> LocalService:
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return local_aws


def test_rerun_after_a_crash_imports_nothing_twice(
    service: LocalService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = []
    for name in ("a", "b", "c"):
        files += write_ct_series(
            tmp_path / "in" / name, 3, series_spec(f"killed-{name}"), rows=32, columns=32
        )
    params = IngestParameters(
        source=str(tmp_path / "in"),
        datastore="killed-store",
        create_datastore=True,
        staging_prefix=f"s3://{BUCKET}/staging",
        output_prefix=f"s3://{BUCKET}/output",
        report_location=str(tmp_path / "reports"),
        max_files_per_job=3,
        poll_interval_seconds=0.2,
        validation_workers=1,
    )
    read_outputs = job_outputs

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the worker died after the jobs completed")

    monkeypatch.setattr(flows.ingest, "job_outputs", crash)
    state = dicom_ingest(params, return_state=True)
    assert state.is_failed()

    mi = boto3.client("medical-imaging", config=Config(inject_host_prefix=False))
    datastore_id = next(
        d["datastoreId"]
        for d in mi.list_datastores()["datastoreSummaries"]
        if d["datastoreName"] == "killed-store"
    )
    jobs_before = mi.list_dicom_import_jobs(datastoreId=datastore_id)["jobSummaries"]
    assert len(jobs_before) == 3

    monkeypatch.setattr(flows.ingest, "job_outputs", read_outputs)
    result = dicom_ingest(params)

    jobs_after = mi.list_dicom_import_jobs(datastoreId=datastore_id)["jobSummaries"]
    assert {j["jobId"] for j in jobs_after} == {j["jobId"] for j in jobs_before}
    report = pd.read_parquet(result.report_files_parquet)
    assert sorted(report["source_uri"]) == sorted(str(p) for p in files)
    assert set(report["status"]) == {"imported"}
    assert set(report["image_set_version"]) == {1}
    image_sets = mi.search_image_sets(datastoreId=datastore_id)["imageSetsMetadataSummaries"]
    assert len(image_sets) == 3
    assert all(s["version"] == 1 for s in image_sets)
