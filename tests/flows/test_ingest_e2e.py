"""The flow end to end against the local HealthImaging service (S3 on the same
endpoint), reached only through the standard AWS environment variables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
from botocore.config import Config

from emulator.samples import (
    BROKEN_MAKERS,
    series_spec,
    write_ct_series,
    write_duplicate_of,
)
from flows.ingest import JOBS_ARTIFACT_KEY, SUMMARY_ARTIFACT_KEY, dicom_ingest
from flows.parameters import IngestParameters
from tasks.image_sets_artifact import IMAGE_SETS_ARTIFACT_KEY
from tasks.report import FILE_COLUMNS

# Each test on both ledger backends: SQLite, and PostgreSQL as machines share it.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness", "ledger_backend")]

BUCKET = "e2e"
SERIES = {"a": 4, "b": 3, "c": 2}  # 9 valid files; 4 per job -> 3 jobs


@pytest.fixture
def service(local_aws: Any) -> Any:
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return local_aws


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, str]:
    """Source files by expected status, keyed by source path."""
    source = tmp_path / "source"
    expected: dict[str, str] = {}
    for name, count in SERIES.items():
        for path in write_ct_series(source / name, count, spec=series_spec(f"e2e-{name}"),
                                    rows=64, columns=64):
            expected[str(path)] = "imported"
    for code, make in BROKEN_MAKERS.items():
        expected[str(make(source / "broken" / f"{code}.dcm"))] = "invalid"
    kept = source / "a" / "slice_0000.dcm"
    expected[str(write_duplicate_of(kept, source / "z-copies" / "again.dcm"))] = "duplicate"
    return expected


def _params(tmp_path: Path, **overrides: Any) -> IngestParameters:
    values: dict[str, Any] = {
        "source": str(tmp_path / "source"),
        "datastore": "e2e-store",
        "create_datastore": True,
        "staging_prefix": f"s3://{BUCKET}/staging",
        "output_prefix": f"s3://{BUCKET}/output",
        "report_location": str(tmp_path / "reports"),
        "max_files_per_job": 4,
        "max_concurrent_jobs": 2,
        "poll_interval_seconds": 0.2,
        "poll_timeout_seconds": 120,
        "validation_workers": 1,
    }
    return IngestParameters(**{**values, **overrides})


def _jobs(datastore_id: str) -> list[dict[str, Any]]:
    client = boto3.client("medical-imaging", config=Config(inject_host_prefix=False))
    pages = client.get_paginator("list_dicom_import_jobs").paginate(datastoreId=datastore_id)
    return [job for page in pages for job in page["jobSummaries"]]


def test_every_file_gets_its_status(service: Any, corpus: dict[str, str],
                                    tmp_path: Path) -> None:
    result = dicom_ingest(_params(tmp_path))

    report = pd.read_parquet(result.report_files_parquet)
    assert list(report.columns) == FILE_COLUMNS
    assert dict(zip(report["source_uri"], report["status"], strict=True)) == corpus
    invalid = report[report["status"] == "invalid"]
    assert sorted(invalid["reason_code"]) == sorted(BROKEN_MAKERS)
    imported = report[report["status"] == "imported"]
    assert imported["image_set_id"].str.fullmatch(r"[0-9a-f]{32}").all()
    # One primary image set per series.
    assert imported.groupby("series_instance_uid")["image_set_id"].nunique().eq(1).all()
    assert imported["image_set_id"].nunique() == len(SERIES)
    assert imported["viewer_path"].eq("/viewer?StudyInstanceUIDs="
                                      + imported["study_instance_uid"]).all()
    assert report.loc[report["status"] != "imported", "viewer_path"].isna().all()
    assert imported["job_id"].nunique() == 3
    assert result.jobs == 3
    assert result.datastore_id is not None
    assert len(_jobs(result.datastore_id)) == 3
    jobs = pd.read_parquet(result.report_jobs_parquet)
    assert (jobs["files"] <= 4).all() and jobs["job_status"].eq("COMPLETED").all()


def test_rerun_starts_no_second_job(service: Any, corpus: dict[str, str],
                                    tmp_path: Path) -> None:
    first = dicom_ingest(_params(tmp_path))
    second = dicom_ingest(_params(tmp_path, reimport=True))

    assert second.run_id == first.run_id
    assert second.datastore_id is not None
    assert len(_jobs(second.datastore_id)) == 3
    report = pd.read_parquet(second.report_files_parquet)
    assert dict(zip(report["source_uri"], report["status"], strict=True)) == corpus


def test_failed_job_and_throttling(service: Any, corpus: dict[str, str],
                                   tmp_path: Path) -> None:
    service.faults.fail_jobs = 1
    service.faults.throttle = True

    result = dicom_ingest(_params(tmp_path))

    report = pd.read_parquet(result.report_files_parquet)
    failed = report[report["status"] == "job_failed"]
    assert failed["job_id"].nunique() == 1
    assert failed["error_message"].str.contains("Injected failure").all()
    assert result.counts["imported"] + len(failed) == 9


def test_artifacts_are_published(service: Any, corpus: dict[str, str],
                                 tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    state = dicom_ingest(_params(tmp_path), return_state=True)
    assert state.state_details.flow_run_id is not None
    this_run = ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])

    with get_client(sync_client=True) as client:
        found = {
            key: client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]),
                                               flow_run_id=this_run)
            )
            for key in (JOBS_ARTIFACT_KEY, SUMMARY_ARTIFACT_KEY, IMAGE_SETS_ARTIFACT_KEY)
        }
    markdown = str(found[SUMMARY_ARTIFACT_KEY][0].data)
    assert "| imported | 9 |" in markdown
    assert "| invalid | 8 |" in markdown
    table = str(found[JOBS_ARTIFACT_KEY][0].data)
    assert "COMPLETED" in table
    assert "Doe" not in markdown + table  # no PHI in artifacts
    image_sets = json.loads(str(found[IMAGE_SETS_ARTIFACT_KEY][0].data))
    report = pd.read_parquet(state.result().report_files_parquet)
    landed = report.dropna(subset=["image_set_id"])
    assert sorted((row["image_set_id"], row["viewer_path"], row["files"]) for row in image_sets
                  ) == sorted(landed.groupby(["image_set_id", "viewer_path"]).size().reset_index(
                      ).itertuples(index=False, name=None))
    assert "Doe" not in str(found[IMAGE_SETS_ARTIFACT_KEY][0].data)


def test_source_in_s3(service: Any, corpus: dict[str, str], tmp_path: Path) -> None:
    s3 = boto3.client("s3")
    source = tmp_path / "source"
    for path in corpus:
        s3.upload_file(path, BUCKET, f"incoming/{Path(path).relative_to(source)}")
    shutil.rmtree(source)

    result = dicom_ingest(_params(tmp_path, source=f"s3://{BUCKET}/incoming"))

    report = pd.read_parquet(result.report_files_parquet)
    expected = {
        f"s3://{BUCKET}/incoming/{Path(path).relative_to(source)}": status
        for path, status in corpus.items()
    }
    assert dict(zip(report["source_uri"], report["status"], strict=True)) == expected
