"""A run works through its source a window at a time: where the windows fall
changes nothing about what happens to each file."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
from botocore.config import Config

from emulator.samples import BROKEN_MAKERS, series_spec, write_ct_series, write_duplicate_of
from flows.ingest import dicom_ingest
from flows.parameters import IngestParameters
from tasks.manifest import job_outputs

# Each test on both ledger backends: SQLite, and PostgreSQL as machines share it.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness", "ledger_backend")]

BUCKET = "windows"


@pytest.fixture
def source(local_aws: Any, tmp_path: Path) -> Path:
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    root = tmp_path / "source"
    for name, count in {"a": 4, "b": 3, "c": 2, "d": 3}.items():
        write_ct_series(root / name, count, spec=series_spec(f"windows-{name}"),
                        rows=32, columns=32)
    for code, make in BROKEN_MAKERS.items():
        make(root / "broken" / f"{code}.dcm")
    # Copies of files of the first window, listed in the last one: duplicates
    # only if the windows know what the earlier ones kept.
    write_duplicate_of(root / "a" / "slice_0000.dcm", root / "z-copies" / "again.dcm")
    write_duplicate_of(root / "a" / "slice_0001.dcm", root / "z-copies" / "twice-1.dcm")
    write_duplicate_of(root / "a" / "slice_0001.dcm", root / "z-copies" / "twice-2.dcm")
    # A copy in the second window, which is validated and staged while the
    # first window's jobs still run: nothing of the first is recorded yet.
    write_duplicate_of(root / "a" / "slice_0002.dcm", root / "d" / "copy-of-a2.dcm")
    return root


def _params(source: Path, tmp_path: Path, datastore: str, window_files: int,
            **overrides: Any) -> IngestParameters:
    return IngestParameters(**{
        "source": str(source), "datastore": datastore, "create_datastore": True,
        "staging_prefix": f"s3://{BUCKET}/staging", "output_prefix": f"s3://{BUCKET}/output",
        "report_location": str(tmp_path / datastore), "max_files_per_job": 3,
        "max_concurrent_jobs": 2, "poll_interval_seconds": 0.2, "poll_timeout_seconds": 120,
        "validation_workers": 1, "window_files": window_files, **overrides})


def _ingest(source: Path, tmp_path: Path, datastore: str, window_files: int) -> Any:
    return dicom_ingest(_params(source, tmp_path, datastore, window_files))


def _outcomes(report: str, source: Path) -> dict[str, tuple[str, str, str]]:
    files = pd.read_parquet(report)
    return {
        str(Path(str(row.source_uri)).relative_to(source)): (
            str(row.status), str(row.reason_code or row.error_type or ""),
            str(row.error_message or "").replace(str(source), ""))
        for row in files.itertuples()
    }


def _instances(datastore_id: str) -> int:
    client = boto3.client("medical-imaging", config=Config(inject_host_prefix=False))
    total = 0
    for page in client.get_paginator("search_image_sets").paginate(datastoreId=datastore_id):
        for image_set in page["imageSetsMetadataSummaries"]:
            metadata = client.get_image_set_metadata(
                datastoreId=datastore_id, imageSetId=image_set["imageSetId"])
            document = json.loads(gzip.decompress(metadata["imageSetMetadataBlob"].read()))
            for study in document["Study"]["Series"].values():
                total += len(study["Instances"])
    return total


def test_windows_give_each_file_the_status_one_window_gives(source: Path,
                                                            tmp_path: Path) -> None:
    files = sum(1 for path in source.rglob("*") if path.is_file())
    whole = _ingest(source, tmp_path, "one-window", window_files=files)
    windows = math.ceil(files / 2.5)
    split = _ingest(source, tmp_path, "windows", window_files=windows)

    assert len(list(Path(split.report_files_parquet).glob("part-*.parquet"))) == 3
    assert split.files == whole.files == files
    assert split.counts == whole.counts
    assert _outcomes(split.report_files_parquet, source) == _outcomes(
        whole.report_files_parquet, source)
    outcomes = _outcomes(split.report_files_parquet, source)
    assert outcomes["z-copies/twice-2.dcm"][0] == "duplicate"
    assert outcomes["d/copy-of-a2.dcm"][0] == "duplicate"
    assert "a/slice_0002.dcm" in outcomes["d/copy-of-a2.dcm"][2]
    # Every valid file landed once, in both data stores.
    assert _instances(split.datastore_id) == _instances(whole.datastore_id) == 12
    assert len(pd.read_csv(split.report_files_csv)) == files


def test_a_run_that_dies_between_windows_is_picked_up_where_it_stopped(
    local_aws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Window 1 reported, window 2's job running when the run dies: the rerun
    gets that job back, starts only the third, and imports nothing twice."""
    import flows.ingest

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    root = tmp_path / "source"
    for name in ("a", "b", "c"):
        write_ct_series(root / name, 3, spec=series_spec(f"windows-killed-{name}"),
                        rows=32, columns=32)
    read_outputs = job_outputs
    calls = []

    def die_on_the_second_window(outcomes: Any) -> Any:
        calls.append(outcomes)
        if len(calls) == 2:
            raise RuntimeError("the worker died while window 2 was reported")
        return read_outputs(outcomes)

    monkeypatch.setattr(flows.ingest, "job_outputs", die_on_the_second_window)
    params: dict[str, Any] = {"source": root, "tmp_path": tmp_path, "datastore": "killed-windows",
              "window_files": 3}
    state = dicom_ingest(_params(**params), return_state=True)
    assert state.is_failed()
    mi = boto3.client("medical-imaging", config=Config(inject_host_prefix=False))
    datastore_id = next(d["datastoreId"] for d in mi.list_datastores()["datastoreSummaries"]
                        if d["datastoreName"] == "killed-windows")
    before = {j["jobId"] for j in mi.list_dicom_import_jobs(
        datastoreId=datastore_id)["jobSummaries"]}
    assert len(before) == 3  # window 3 was submitted while window 2 was being reported

    monkeypatch.setattr(flows.ingest, "job_outputs", read_outputs)
    result = dicom_ingest(_params(**params))

    after = {j["jobId"] for j in mi.list_dicom_import_jobs(
        datastoreId=datastore_id)["jobSummaries"]}
    assert after == before
    report = pd.read_parquet(result.report_files_parquet)
    assert len(report) == 6 and set(report["status"]) == {"imported"}
    assert result.skipped_unchanged == 3
    assert _instances(datastore_id) == 9
    image_sets = mi.search_image_sets(datastoreId=datastore_id)["imageSetsMetadataSummaries"]
    assert sorted(s["version"] for s in image_sets) == [1, 1, 1]
