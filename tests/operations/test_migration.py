"""A migration as an operator runs one: a real Prefect server, a process work
pool with two workers and the ingest deployment on it, ``dicom-import
migrate`` over a few hundred files in small windows under a job-slot limit of
two, and one worker killed outright mid-run. Every file is still accounted
for exactly once, no job is started twice, the local service never has more
than two jobs in flight, and the summary matches the per-file parts.

Slow and generous on purpose: every wait is on a condition, with minutes of
margin for a loaded two-core machine.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pandas as pd
import psutil
import pytest
import sqlalchemy as sa

from emulator.config import ServiceConfig
from emulator.samples import series_spec, write_ct_series
from emulator.server import LocalService
from tasks.ledger import engine_for, files_table, runs_table
from tests.operations.conftest import (
    import_jobs,
    imported_by_service,
    medical_imaging,
    most_jobs_in_flight,
)
from tests.operations.served import PrefectServer, prefect_server, quiet_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BUCKET = "migration"
POOL = "dicom-import"
SERIES, PER_SERIES = 12, 25  # 300 files
JOBS_IN_FLIGHT = 2


@dataclass
class Stack:
    server: PrefectServer
    service: LocalService
    root: Path
    env: dict[str, str]
    workers: list[subprocess.Popen[bytes]]


def _settings(root: Path) -> dict[str, str]:
    return {
        "DICOM_IMPORT_STAGING_PREFIX": f"s3://{BUCKET}/staging",
        "DICOM_IMPORT_OUTPUT_PREFIX": f"s3://{BUCKET}/output",
        "DICOM_IMPORT_REPORT_LOCATION": str(root / "reports"),
        "DICOM_IMPORT_POLL_INTERVAL_SECONDS": "0.2",
        "DICOM_IMPORT_VALIDATION_WORKERS": "1",
        "DICOM_IMPORT_MAX_FILES_PER_JOB": "10",
        # A killed run on another host would wait this long; here its PID tells.
        "DICOM_IMPORT_RUN_PRESUMED_DEAD_SECONDS": "60",
    }


def _until(check: Callable[[], object], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def _prefect(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # A session of its own, so the test can kill the worker's process group.
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type",
             "process"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("migration")
    config = ServiceConfig(datastore_transition_seconds=0.05)
    with LocalService(config=config) as service, pytest.MonkeyPatch.context() as patch, \
            prefect_server(root / "server-home", root / "server.log") as server:
        # The test's own boto3 clients reach the service as the product does.
        for name, value in service.env().items():
            patch.setenv(name, value)
        # Jobs long enough to overlap, so that the limit is what keeps them apart.
        service.faults.job_duration_seconds = 0.5
        env = {**quiet_env(root / "client-home"), **service.env(), **_settings(root),
               "PREFECT_API_URL": server.api_url, "PYTHONPATH": str(REPO), "PWD": str(REPO),
               "PREFECT_WORKER_QUERY_SECONDS": "2"}
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        _prefect(env, "work-pool", "create", POOL, "--type", "process")
        _prefect(env, "deploy", "--prefect-file", "deployments/prefect.yaml", "--name",
                 "manual", "--no-prompt")
        workers = [_worker(env, root / f"worker-{n}.log") for n in range(2)]
        try:
            yield Stack(server, service, root, env, workers)
        finally:
            for worker in workers:
                _kill_tree(worker.pid)
                worker.wait()


def _kill_tree(pid: int) -> list[int]:
    """SIGKILL a worker's process group and every process below it: Prefect
    starts each flow run in a session of its own, which the worker's group
    does not reach. Returns the PIDs killed below the worker."""
    try:
        below = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for group in {os.getpgid(pid), *(_group(p) for p in below)} - {None, os.getpgid(0)}:
        os.killpg(group, signal.SIGKILL)
    return [p.pid for p in below]


def _group(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except ProcessLookupError:
        return None


def _ingest_runs_started(url: str) -> int:
    with engine_for(url).begin() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(runs_table)
                            .where(runs_table.c.flow == "dicom-ingest")).scalar_one()


def _files_done(url: str) -> int:
    with engine_for(url).begin() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(files_table)
                            .where(files_table.c.status.is_not(None))).scalar_one()


def _summary_counts(server: PrefectServer) -> dict[str, int]:
    artifacts = httpx.post(f"{server.api_url}/artifacts/filter", timeout=30, json={
        "artifacts": {"key": {"any_": ["dicom-migrate-summary"]}}}).json()
    (summary,) = artifacts
    return {status: int(count) for status, count in
            re.findall(r"^\| (\w+) \| (\d+) \|$", summary["data"], re.MULTILINE)}


def test_migration_survives_a_killed_worker(stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "pacs"
    for index in range(SERIES):
        write_ct_series(source / f"s{index:02d}", PER_SERIES, series_spec(f"pacs-{index}"), 8, 8)
    wanted = sorted(str(p.relative_to(source)) for p in source.rglob("*.dcm"))
    reports = stack.root / "reports"
    url = f"sqlite:///{reports}/ledger.sqlite"

    migration = subprocess.Popen(
        [sys.executable, "-m", "cli", "migrate", str(source), "--datastore", "pacs-store",
         "--workers", "2", "--window-files", "40", "--max-jobs-in-flight",
         str(JOBS_IN_FLIGHT), "--check-interval-seconds", "2"],
        cwd=REPO, env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # Mid-run: both ingest runs began and some files have their outcome.
        _until(lambda: reports.joinpath("ledger.sqlite").exists()
               and _ingest_runs_started(url) >= 2 and _files_done(url) >= 40,
               "two ingest runs under way", 600)
        victim = next(w for w in stack.workers if psutil.Process(w.pid).children())
        assert _kill_tree(victim.pid), "the worker ran no flow run"
        output, _ = migration.communicate(timeout=1500)
    finally:
        if migration.poll() is None:
            migration.kill()
    text = output.decode()
    assert "Traceback" not in text, text
    assert migration.returncode == 0, text

    # Every file, exactly once, in the per-file parts of the ingest runs.
    parts = pd.concat([pd.read_parquet(p) for p in reports.rglob("*.parquet")
                       if "files" in p.name], ignore_index=True)
    found = sorted(parts["source_uri"].map(lambda u: str(Path(u).relative_to(source))))
    assert found == wanted
    assert set(parts["status"]) == {"imported"}

    # The service: each file imported once, no job started twice, never more
    # than the limit in flight.
    (datastore_id,) = [d["datastoreId"] for d in
                       medical_imaging().list_datastores()["datastoreSummaries"]]
    assert Counter(imported_by_service(datastore_id)) == Counter(wanted)
    jobs = import_jobs(datastore_id)
    assert len({j["jobName"] for j in jobs}) == len(jobs)
    assert most_jobs_in_flight(datastore_id) <= JOBS_IN_FLIGHT

    # The summary (from the ledger) says what the parts say.
    summary = _summary_counts(stack.server)
    assert {k: v for k, v in summary.items() if v} == dict(Counter(parts["status"]))

