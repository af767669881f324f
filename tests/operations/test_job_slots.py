"""Import job slots shared across runs: two ingestions of different sources
into one data store, in two processes at once, under a Prefect concurrency
limit of one job, never have two jobs in flight in the local service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from emulator.edge.server import LocalService
from emulator.samples import series_spec, write_ct_series
from tasks.import_jobs import resolve_datastore
from tasks.job_slots import HEALTHIMAGING_CONCURRENT_JOBS, ensure_job_limit, job_limit_name
from tests.operations.conftest import BUCKET, import_jobs, medical_imaging, most_jobs_in_flight

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

REPO = Path(__file__).resolve().parents[2]


def _ingest(source: Path, datastore_id: str, tmp_path: Path) -> subprocess.Popen[str]:
    """``dicom-import ingest`` in a process of its own, on the session's Prefect server."""
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "ingest", str(source), "--datastore", datastore_id,
         "--staging-prefix", f"s3://{BUCKET}/staging", "--output-prefix",
         f"s3://{BUCKET}/output", "--report-location", str(tmp_path / "reports"),
         "--max-files-per-job", "2", "--max-concurrent-jobs", "3",
         "--poll-interval-seconds", "0.1", "--validation-workers", "1"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_two_runs_share_one_job_slot(service: LocalService, tmp_path: Path) -> None:
    # Long enough that jobs of the two runs would overlap without the limit.
    service.faults.job_duration_seconds = 1.0
    datastore_id = resolve_datastore(medical_imaging(), "slots-store", create=True).datastore_id
    assert ensure_job_limit(datastore_id, 1) == 1
    for name in ("a", "b"):
        write_ct_series(tmp_path / name, 6, series_spec(f"slots-{name}"), 8, 8)

    runs = [_ingest(tmp_path / name, datastore_id, tmp_path) for name in ("a", "b")]
    outputs = [run.communicate(timeout=600)[0] for run in runs]

    assert [run.returncode for run in runs] == [0, 0], outputs
    assert len(import_jobs(datastore_id)) == 6  # three per run
    assert most_jobs_in_flight(datastore_id) == 1
    # The runs used the limit an operator set; they did not reset it.
    assert ensure_job_limit(datastore_id) == 1


def test_a_missing_limit_is_created_at_healthimaging_quota() -> None:
    datastore_id = "0123456789abcdef0123456789abcdef"
    assert ensure_job_limit(datastore_id) == HEALTHIMAGING_CONCURRENT_JOBS
    assert ensure_job_limit(datastore_id, 5) == 5  # a migration lowers it
    assert ensure_job_limit(datastore_id) == 5


def test_no_shared_limit_on_a_temporary_server() -> None:
    with temporary_settings({PREFECT_API_URL: ""}):
        assert ensure_job_limit("fedcba9876543210fedcba9876543210") is None
    assert "/" not in job_limit_name("fedcba9876543210fedcba9876543210")
