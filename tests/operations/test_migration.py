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
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pandas as pd
import psutil
import pytest
import sqlalchemy as sa

from emulator.config import ServiceConfig
from emulator.edge.server import LocalService
from emulator.samples import series_spec, write_ct_series
from tasks.ledger import engine_for, files_table, runs_table
from tests.conftest import new_database
from tests.operations.conftest import (
    import_jobs,
    imported_by_service,
    medical_imaging,
    most_jobs_in_flight,
)
from tests.operations.served import PrefectServer, prefect_server, quiet_env

# A migration waits up to 25 minutes for its runs (the communicate timeout
# below); the suite's 10-minute default would cut it short on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.heavy(minutes=4), pytest.mark.timeout(1800)]

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
    ledger_url: str


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
def stack(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack on the ledger backend the test names (indirect): SQLite beside
    the reports, or PostgreSQL, which the machines of a real migration share."""
    root = tmp_path_factory.mktemp("migration")
    ledger = {"sqlite": f"sqlite:///{root / 'reports'}/ledger.sqlite",
              "postgresql": ""}[request.param]
    if not ledger:
        ledger = new_database(request.getfixturevalue("postgres_url"))
    (root / "reports").mkdir()
    engine_for(ledger)  # made before the migration, as a shared ledger is
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
               "PREFECT_WORKER_QUERY_SECONDS": "2", "DICOM_IMPORT_LEDGER_URL": ledger}
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        _prefect(env, "work-pool", "create", POOL, "--type", "process")
        _prefect(env, "deploy", "--prefect-file", "deployments/prefect.yaml", "--name",
                 "manual", "--no-prompt")
        workers = [_worker(env, root / f"worker-{n}.log") for n in range(2)]
        try:
            yield Stack(server, service, root, env, workers, ledger)
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
    for group in {_group(pid), *(_group(p.pid) for p in below)} - {None, os.getpgid(0)}:
        assert group is not None  # taken out of the set
        with suppress(ProcessLookupError):  # a group of zombies only
            os.killpg(group, signal.SIGKILL)
    return [p.pid for p in below]


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
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


def _summary_counts(server: PrefectServer, source: Path) -> dict[str, int]:
    artifacts = httpx.post(f"{server.api_url}/artifacts/filter", timeout=30, json={
        "artifacts": {"key": {"any_": ["dicom-migrate-summary"]}}}).json()
    (summary,) = [a["data"] for a in artifacts if f"`{source}`" in a["data"]]
    return {status: int(count) for status, count in
            re.findall(r"^\| (\w+) \| (\d+) \|$", summary, re.MULTILINE)}


def _ingest_runs(server: PrefectServer, inventory_id: str) -> list[dict[str, object]]:
    return list(httpx.post(f"{server.api_url}/flow_runs/filter", timeout=30, json={
        "flow_runs": {"tags": {"all_": [f"migration:{inventory_id}"]}}}).json())


def _source(folder: Path, series: int, seed: str) -> list[str]:
    for index in range(series):
        write_ct_series(folder / f"s{index:02d}", PER_SERIES, series_spec(f"{seed}-{index}"), 8, 8)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.dcm"))


def _migrate(stack: Stack, source: Path, datastore: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "migrate", str(source), "--datastore", datastore,
         "--create-datastore",
         "--workers", "2", "--window-files", "40", "--max-jobs-in-flight",
         str(JOBS_IN_FLIGHT), "--check-interval-seconds", "2"],
        cwd=REPO, env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _progress(url: str) -> tuple[int, int]:
    """Ingest runs started and files with an outcome, so far."""
    return _ingest_runs_started(url), _files_done(url)


def _under_way(url: str, runs_before: int, files_before: int) -> Callable[[], bool]:
    """Both ingest runs of this migration began and some files have their outcome."""
    return lambda: _ingest_runs_started(url) >= runs_before + 2 \
        and _files_done(url) >= files_before + 40


def _finish(migration: subprocess.Popen[bytes]) -> str:
    try:
        output, _ = migration.communicate(timeout=1500)
    except subprocess.TimeoutExpired:
        migration.kill()
        raise
    text = output.decode()
    assert "Traceback" not in text, text
    assert migration.returncode == 0, text
    return text


def _accounted_once(stack: Stack, source: Path, wanted: list[str], datastore: str,
                    output: str) -> list[dict[str, object]]:
    """Every file exactly once in the parts, in the service, and in the
    summary; no job twice; never more than the limit in flight. Returns the
    migration's ingest runs as Prefect has them."""
    reports = stack.root / "reports"
    parts = pd.concat([pd.read_parquet(p) for p in reports.rglob("files/part-*.parquet")],
                      ignore_index=True)
    parts = parts[parts["source_uri"].str.startswith(f"{source}/")]
    found = sorted(parts["source_uri"].map(lambda u: str(Path(u).relative_to(source))))
    assert found == wanted
    assert set(parts["status"]) == {"imported"}

    (datastore_id,) = [d["datastoreId"] for d in
                       medical_imaging().list_datastores()["datastoreSummaries"]
                       if d["datastoreName"] == datastore]
    assert Counter(imported_by_service(datastore_id)) == Counter(wanted)
    jobs = import_jobs(datastore_id)
    assert len({j["jobName"] for j in jobs}) == len(jobs)  # a job name is its batch
    assert most_jobs_in_flight(datastore_id) <= JOBS_IN_FLIGHT

    summary = _summary_counts(stack.server, source)
    assert {k: v for k, v in summary.items() if v} == dict(Counter(parts["status"]))
    (inventory_id,) = re.findall(r"files in inventory (\S+),", output)
    return _ingest_runs(stack.server, inventory_id)


# Each on one ledger backend, so that both are covered at the cost of two
# migrations, not four.
@pytest.mark.parametrize("stack", ["postgresql"], indirect=True)
def test_migration_survives_a_killed_worker(stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "pacs"
    wanted = _source(source, SERIES, "pacs")
    url = stack.ledger_url
    before = _progress(url)

    migration = _migrate(stack, source, "pacs-store")
    try:
        _until(_under_way(url, *before), "two ingest runs under way", 600)
        victim = next(w for w in stack.workers if psutil.Process(w.pid).children())
        assert _kill_tree(victim.pid), "the worker ran no flow run"
    except BaseException:
        migration.kill()
        raise
    output = _finish(migration)

    runs = _accounted_once(stack, source, wanted, "pacs-store", output)
    states = Counter(str(run["state_name"]) for run in runs)
    # The killed one was found dead and marked so; the other did the rest.
    assert states["Crashed"] >= 1 and states["Completed"] >= 1, states


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_a_migration_whose_workers_all_died_finishes_on_a_replacement(
    stack: Stack, tmp_path: Path
) -> None:
    source = tmp_path / "relay"
    wanted = _source(source, 8, "relay")
    url = stack.ledger_url
    before = _progress(url)

    migration = _migrate(stack, source, "relay-store")
    try:
        _until(_under_way(url, *before), "two ingest runs under way", 600)
        for worker in stack.workers:
            _kill_tree(worker.pid)
        stack.workers.append(_worker(stack.env, stack.root / "worker-replacement.log"))
    except BaseException:
        migration.kill()
        raise
    output = _finish(migration)

    runs = _accounted_once(stack, source, wanted, "relay-store", output)
    states = Counter(str(run["state_name"]) for run in runs)
    assert len(runs) == 3 and states["Crashed"] == 2 and states["Completed"] == 1, states
