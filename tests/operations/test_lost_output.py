"""A COMPLETED job's output vanishes (a lifecycle rule, a restarted service):
files the data store holds stay imported and are never imported again; only
those it does not hold are retried."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import boto3
import pandas as pd
import pytest

from emulator.edge.server import LocalService
from emulator.samples import series_spec, write_ct_series
from flows.ingest import IngestResult, dicom_ingest
from flows.retry import retry_failed
from tasks.ledger import RunLedger, ledger_url
from tests.operations.conftest import (
    BUCKET,
    import_jobs,
    imported_by_service,
    ingest_params,
    medical_imaging,
    retry_params,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _rows(path: str) -> pd.DataFrame:
    return pd.read_parquet(path)


def _import(tmp_path: Path) -> tuple[IngestResult, list[Path], list[Path]]:
    source = tmp_path / "source"
    kept = write_ct_series(source / "kept", 3, series_spec("lost-kept"), 16, 16)
    dropped = write_ct_series(source / "dropped", 2, series_spec("lost-dropped"), 16, 16)
    first = dicom_ingest(ingest_params(tmp_path))
    assert first.counts["imported"] == 5 and first.jobs == 2
    return first, kept, dropped


def _lose_job_outputs() -> None:
    """What an S3 lifecycle rule on the output prefix does."""
    bucket = boto3.resource("s3").Bucket(BUCKET)
    deleted = bucket.objects.filter(Prefix="output/").delete()
    assert deleted and deleted[0]["Deleted"]


def _image_sets(datastore_id: str) -> dict[str, tuple[str, int]]:
    """Series Instance UID -> (image set ID, version) of every image set left."""
    pages = medical_imaging().get_paginator("search_image_sets").paginate(
        datastoreId=datastore_id)
    return {
        item["DICOMTags"]["DICOMSeriesInstanceUID"]: (item["imageSetId"], item["version"])
        for page in pages for item in page["imageSetsMetadataSummaries"]
    }


def _ledger(tmp_path: Path, datastore_id: str) -> RunLedger:
    return RunLedger(ledger_url(None, str(tmp_path / "reports")), "observer", datastore_id)


def test_lost_output_of_files_the_datastore_holds_imports_nothing_again(
    service: LocalService, tmp_path: Path
) -> None:
    first, kept, dropped = _import(tmp_path)
    datastore_id = first.datastore_id
    assert datastore_id is not None
    jobs_before = {j["jobId"] for j in import_jobs(datastore_id)}
    sets_before = _image_sets(datastore_id)
    _lose_job_outputs()

    rerun = dicom_ingest(ingest_params(tmp_path, reimport=True))

    rows = _rows(rerun.report_files_parquet)
    assert sorted(rows["source_uri"]) == sorted(map(str, kept + dropped))
    assert rows["status"].eq("imported").all(), rows[["status", "error_message"]]
    assert rows["error_message"].str.startswith("Confirmed in the data store").all()
    assert set(rows["image_set_id"]) == {image_set for image_set, _ in sets_before.values()}
    assert rows["is_primary"].all() and rows["image_set_version"].eq(1).all()
    assert rerun.counts["output_missing"] == 0 and rerun.counts["import_failed"] == 0
    assert {j["jobId"] for j in import_jobs(datastore_id)} == jobs_before
    assert _image_sets(datastore_id) == sets_before
    assert _ledger(tmp_path, datastore_id).failed_files() == []

    retry = retry_failed(retry_params(tmp_path))

    assert retry.jobs == 0 and retry.retried_files == 0
    assert _rows(retry.report_files_parquet).empty
    assert _image_sets(datastore_id) == sets_before
    assert {j["jobId"] for j in import_jobs(datastore_id)} == jobs_before


def _delete_image_set(datastore_id: str, image_set_id: str) -> None:
    client = medical_imaging()
    client.delete_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
    deadline = time.monotonic() + 30
    while image_set_id in {s for s, _ in _image_sets(datastore_id).values()}:
        assert time.monotonic() < deadline, "the image set was never deleted"
        time.sleep(0.1)


def test_lost_output_of_a_deleted_image_set_is_output_missing_and_retried(
    service: LocalService, tmp_path: Path
) -> None:
    first, kept, dropped = _import(tmp_path)
    datastore_id = first.datastore_id
    assert datastore_id is not None
    sets_before = _image_sets(datastore_id)
    kept_series, dropped_series = series_spec("lost-kept"), series_spec("lost-dropped")
    kept_set = sets_before[kept_series.series_instance_uid]
    _delete_image_set(datastore_id, sets_before[dropped_series.series_instance_uid][0])
    _lose_job_outputs()

    rerun = dicom_ingest(ingest_params(tmp_path, reimport=True))

    rows = _rows(rerun.report_files_parquet).set_index("source_uri")
    assert set(rows.loc[list(map(str, kept)), "status"]) == {"imported"}
    missing = rows.loc[list(map(str, dropped))]
    assert set(missing["status"]) == {"output_missing"}
    assert missing["error_message"].str.contains("job-output-manifest.json").all()
    assert missing["image_set_id"].isna().all()
    assert rerun.counts["output_missing"] == 2
    assert len(import_jobs(datastore_id)) == 2

    retry = retry_failed(retry_params(tmp_path))

    retried = _rows(retry.report_files_parquet)
    assert sorted(retried["source_uri"]) == sorted(map(str, dropped))
    assert retried["status"].eq("imported").all() and retry.jobs == 1
    assert _image_sets(datastore_id)[kept_series.series_instance_uid] == kept_set
    # The one job output left is the retry's: it imported exactly those files.
    assert Counter(imported_by_service(datastore_id)) == {
        str(p.relative_to(tmp_path / "source")): 1 for p in dropped}
