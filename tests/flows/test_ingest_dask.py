"""The flow with validation and staging on a Dask cluster of two worker
processes writes the report a local run writes.

Worker processes cannot see an in-process mock, so both runs use the local
service over HTTP; the workers inherit its endpoint variables because the
cluster starts after they are set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest

from emulator.samples import BROKEN_MAKERS, series_spec, write_ct_series, write_duplicate_of
from flows.ingest import dicom_ingest
from flows.parameters import IngestParameters
from tests.local_service import serve_locally

pytestmark = [pytest.mark.slow, pytest.mark.heavy(minutes=3),
              pytest.mark.usefixtures("prefect_harness"),
              # One cluster for the module (see the cluster fixture).
              pytest.mark.xdist_group("dask-cluster")]

distributed = pytest.importorskip("distributed")

BUCKET = "dask"
# Enough files for several parts of each stage (parts hold 500 files or more).
SERIES = 9
SLICES = 120
# Differ from run to run: each run has a data store of its own.
RUN_SPECIFIC = ["job_id", "image_set_id", "staged_key"]


@pytest.fixture(scope="module")
def service() -> Iterator[Any]:
    # Frames as they came: HTJ2K encoding is not what this test is about.
    # Each test has data stores of its own.
    with pytest.MonkeyPatch.context() as patch, \
            serve_locally(patch, transcode_htj2k=False) as svc:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield svc


@pytest.fixture(scope="module")
def cluster(service: Any) -> Iterator[Any]:
    """One for the module: a cluster takes a minute to start on a busy
    machine, and its workers take the service's address from the environment
    they start in, so the service lives as long."""
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as local_cluster:
        yield local_cluster


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    for index in range(SERIES):
        write_ct_series(root / f"s{index}", SLICES, spec=series_spec(f"dask-{index}"),
                        rows=8, columns=8)
    for code, make in BROKEN_MAKERS.items():
        make(root / "broken" / f"{code}.dcm")
    # Listed last, so its original is in another part: duplicates span parts.
    write_duplicate_of(root / "s0" / "slice_0000.dcm", root / "z-copies" / "again.dcm")
    return root


def _run(source: Path, tmp_path: Path, name: str, dask_address: str | None) -> Any:
    return dicom_ingest(IngestParameters(
        source=str(source),
        datastore=f"{name}-store",
        create_datastore=True,
        staging_prefix=f"s3://{BUCKET}/staging",
        output_prefix=f"s3://{BUCKET}/output",
        report_location=str(tmp_path / f"reports-{name}"),
        max_files_per_job=250,
        max_concurrent_jobs=4,
        poll_interval_seconds=0.2,
        poll_timeout_seconds=300,
        validation_workers=1,
        dask_address=dask_address,
    ), return_state=True)


def _task_names(flow_run_id: Any) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return [run.name.rsplit("-", 1)[0] for run in runs]


def test_cluster_run_writes_the_local_report(
    cluster: Any, source: Path, tmp_path: Path
) -> None:
    on_cluster = _run(source, tmp_path, "cluster", cluster.scheduler_address)
    local = _run(source, tmp_path, "local", None)

    reports = []
    for state in (on_cluster, local):
        result = state.result()
        frame = pd.read_parquet(result.report_files_parquet)
        reports.append(frame.sort_values("source_uri", ignore_index=True))
    cluster_report, local_report = reports
    pd.testing.assert_frame_equal(cluster_report.drop(columns=RUN_SPECIFIC),
                                  local_report.drop(columns=RUN_SPECIFIC))
    assert cluster_report["status"].value_counts().to_dict() == {
        "imported": SERIES * SLICES, "invalid": len(BROKEN_MAKERS), "duplicate": 1,
    }
    assert cluster_report["image_set_id"].notna().sum() == SERIES * SLICES
    stages = {"discover", "validate", "stage", "import", "verify", "report"}
    assert set(on_cluster.result().timings) == stages == set(local.result().timings)

    tasks = _task_names(on_cluster.state_details.flow_run_id)
    assert tasks.count("validate-part") >= 2 and tasks.count("stage-part") >= 2
    assert "validate" not in tasks and "stage" not in tasks
    assert "validate" in _task_names(local.state_details.flow_run_id)


def test_retry_validates_and_stages_on_the_cluster(
    service: Any, cluster: Any, tmp_path: Path
) -> None:
    """retry_failed with a scheduler address uses the cluster as ingestion does."""
    from flows.parameters import RetryParameters
    from flows.retry import retry_failed

    source = tmp_path / "retry-source"
    write_ct_series(source, 20, spec=series_spec("dask-retry"), rows=8, columns=8)
    locations: dict[str, Any] = {
        "datastore": "retry-store",
        "staging_prefix": f"s3://{BUCKET}/staging",
        "output_prefix": f"s3://{BUCKET}/output",
        "report_location": str(tmp_path / "reports-retry"),
        "max_files_per_job": 10,
        "poll_interval_seconds": 0.2,
        "poll_timeout_seconds": 300,
    }
    service.faults.fail_jobs = 2
    failed = dicom_ingest(IngestParameters(source=str(source), create_datastore=True,
                                           **locations))
    assert _nonzero(failed.counts) == {"job_failed": 20}

    retried = retry_failed(
        RetryParameters(dask_address=cluster.scheduler_address, **locations),
        return_state=True,
    )

    assert _nonzero(retried.result().counts) == {"imported": 20}
    tasks = _task_names(retried.state_details.flow_run_id)
    assert "validate-part" in tasks and "stage-part" in tasks
    assert "validate" not in tasks and "stage" not in tasks


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {status: count for status, count in counts.items() if count}
