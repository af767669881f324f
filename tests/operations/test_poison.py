"""A job that FAILED whole: retry_failed isolates the file that broke it and
imports its neighbours, and never imports again what such a job stored."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
import sqlalchemy as sa

from emulator.edge.server import LocalService
from emulator.faults import POISON_MESSAGE
from emulator.samples import series_spec, write_ct_series
from flows.ingest import dicom_ingest
from flows.retry import retry_failed
from tasks.ledger import RunLedger, ledger_url
from tasks.ledger.schema import jobs_table
from tasks.poll import JobOutcome, wait_for_job
from tasks.statuses import ISOLATED, JobStatus
from tests.operations.conftest import (
    BUCKET,
    import_jobs,
    imported_by_service,
    ingest_params,
    medical_imaging,
    retry_params,
)
from tests.operations.killed import after_a_killed_run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def test_a_poison_file_is_isolated_and_its_neighbours_imported(
    service: LocalService, tmp_path: Path
) -> None:
    files = write_ct_series(tmp_path / "source" / "s", 10, series_spec("poison"), 16, 16)
    poison = files[3]
    service.faults.fail_jobs_with_key = rf"/{poison.name}$"
    first = dicom_ingest(ingest_params(tmp_path, max_files_per_job=10))
    assert first.counts["job_failed"] == 10 and first.jobs == 1
    datastore_id = first.datastore_id
    assert datastore_id is not None

    result = retry_failed(retry_params(tmp_path, max_files_per_job=10))

    rows = pd.read_parquet(result.report_files_parquet).set_index("source_uri")
    assert sorted(rows.index) == sorted(map(str, files))
    assert dict(Counter(rows["status"])) == {"imported": 9, "job_failed": 1}
    alone = rows.loc[str(poison)]
    assert (alone["status"], alone["error_type"]) == ("job_failed", ISOLATED)
    assert alone["error_message"] == POISON_MESSAGE
    assert rows.drop(str(poison))["error_type"].isna().all()
    # The batch again (it fails), then per round one half that fails and one
    # that imports: ceil(log2 10) rounds.
    rounds = math.ceil(math.log2(len(files)))
    (failed_first,) = set(pd.read_parquet(first.report_files_parquet)["job_id"])
    started = [j for j in import_jobs(datastore_id) if j["jobId"] != failed_first]
    assert len(started) == result.jobs <= 1 + 2 * rounds
    assert Counter(j["jobStatus"] for j in started)["FAILED"] <= 1 + rounds
    # Each neighbour imported once; every job the retry started is in the ledger.
    assert Counter(imported_by_service(datastore_id)) == {
        f"s/{f.name}": 1 for f in files if f != poison}
    ledger = RunLedger(ledger_url(None, str(tmp_path / "reports")), "observer", datastore_id)
    with ledger.engine.begin() as conn:
        recorded = set(conn.execute(sa.select(jobs_table.c.job_id)).scalars())
    assert recorded == {j["jobId"] for j in import_jobs(datastore_id)}

    # The isolated file would break its next job alike: unchanged, it waits.
    again = retry_failed(retry_params(tmp_path, max_files_per_job=10))
    assert again.jobs == 0 and again.not_retried_unchanged == 1


def _job_inputs(datastore_id: str) -> list[str]:
    client = medical_imaging()
    return [client.get_dicom_import_job(datastoreId=datastore_id, jobId=job["jobId"])
            ["jobProperties"]["inputS3Uri"] for job in import_jobs(datastore_id)]


def _inputs(datastore_id: str) -> Counter[frozenset[str]]:
    """How many jobs were given each set of files (by name), read from the
    jobs' input prefixes."""
    s3 = boto3.client("s3")
    found: Counter[frozenset[str]] = Counter()
    for uri in _job_inputs(datastore_id):
        prefix = uri.removeprefix(f"s3://{BUCKET}/")
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        found[frozenset(item["Key"].rsplit("/", 1)[-1] for page in pages
                        for item in page.get("Contents", []))] += 1
    return found


def test_a_retry_killed_while_splitting_goes_on_without_a_job_twice(
    service: LocalService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_ct_series(tmp_path / "source" / "s", 10, series_spec("killed-split"), 16, 16)
    poison = files[7]
    service.faults.fail_jobs_with_key = rf"/{poison.name}$"
    first = dicom_ingest(ingest_params(tmp_path, max_files_per_job=10))
    datastore_id = first.datastore_id
    assert datastore_id is not None and first.counts["job_failed"] == 10
    service.faults.job_duration_seconds = 2.0
    with after_a_killed_run("flows.retry:retry_failed",
                            retry_params(tmp_path, max_files_per_job=10),
                            lambda: any("-split/" in uri for uri in _job_inputs(datastore_id)),
                            "its first split", service, tmp_path, monkeypatch):
        service.faults.job_duration_seconds = 0.0
        result = retry_failed(retry_params(tmp_path, max_files_per_job=10))

    rows = pd.read_parquet(result.report_files_parquet).set_index("source_uri")
    assert sorted(rows.index) == sorted(map(str, files))
    assert dict(Counter(rows["status"])) == {"imported": 9, "job_failed": 1}
    assert rows.loc[str(poison), "error_type"] == ISOLATED
    assert result.resumed_jobs >= 1
    # No set of files went into two jobs, except the batch the ingestion's
    # job failed with, which the killed retry started once more.
    jobs_per_input = _inputs(datastore_id)
    assert jobs_per_input.pop(frozenset(f.name for f in files)) == 2
    assert set(jobs_per_input.values()) == {1}
    assert Counter(imported_by_service(datastore_id)) == {
        f"s/{f.name}": 1 for f in files if f != poison}


def test_files_a_failed_job_stored_are_confirmed_not_imported_again(
    service: LocalService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HealthImaging does not promise that a FAILED job stored nothing: here
    every job stores its files and is then reported FAILED."""
    files = write_ct_series(tmp_path / "source" / "s", 3, series_spec("stored"), 16, 16)
    wait = wait_for_job

    def failed_after_storing(*args: Any, **kwargs: Any) -> JobOutcome:
        return replace(wait(*args, **kwargs), status=JobStatus.FAILED,
                       message="The import was stopped; start a new import job.")

    with monkeypatch.context() as patch:
        patch.setattr("tasks.import_jobs.wait_for_job", failed_after_storing)
        first = dicom_ingest(ingest_params(tmp_path))
    assert first.counts["job_failed"] == 3
    assert first.datastore_id is not None

    result = retry_failed(retry_params(tmp_path))

    rows = pd.read_parquet(result.report_files_parquet)
    assert sorted(rows["source_uri"]) == sorted(map(str, files))
    assert rows["status"].eq("imported").all() and result.jobs == 0
    assert rows["error_message"].str.startswith("Confirmed in the data store").all()
    assert rows["image_set_id"].notna().all()
    assert len(import_jobs(first.datastore_id)) == 1
    assert Counter(imported_by_service(first.datastore_id)) == {
        f"s/{f.name}": 1 for f in files}


def test_a_changed_file_whose_job_failed_is_imported_again_not_confirmed(
    service: LocalService, tmp_path: Path
) -> None:
    """The data store holds its instance from the old bytes: that says nothing
    of the new ones."""
    files = write_ct_series(tmp_path / "source" / "s", 2, series_spec("changed"), 16, 16)
    first = dicom_ingest(ingest_params(tmp_path))
    assert first.counts["imported"] == 2 and first.datastore_id is not None
    write_ct_series(tmp_path / "other", 2, series_spec("changed"), 8, 8)[0].replace(files[0])
    service.faults.fail_jobs = 1
    second = dicom_ingest(ingest_params(tmp_path))
    assert second.counts["job_failed"] == 1

    result = retry_failed(retry_params(tmp_path))

    (row,) = pd.read_parquet(result.report_files_parquet).to_dict("records")
    assert (row["source_uri"], row["status"]) == (str(files[0]), "imported")
    assert pd.isna(row["error_message"]) and result.jobs == 1
