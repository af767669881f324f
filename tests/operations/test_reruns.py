"""Reruns as operators do them: after a FAILED job, after a kill, after
Ctrl-C, and while another run holds the files. Each ends with every file
accounted for, no file imported twice, and an exit status that says so."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from cli.main import main
from emulator.edge.server import LocalService
from emulator.samples import series_spec, write_ct_series
from flows.ingest import dicom_ingest
from tasks.ledger import RunLedger, ledger_url
from tests.operations.conftest import (
    BUCKET,
    import_jobs,
    imported_by_service,
    ingest_params,
    medical_imaging,
)
from tests.operations.served import quiet_env

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _cli_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "ingest", str(tmp_path / "source"), "--datastore", "reruns-store",
        "--create-datastore", "--staging-prefix", f"s3://{BUCKET}/staging", "--output-prefix", f"s3://{BUCKET}/output",
        "--report-location", str(tmp_path / "reports"), "--max-files-per-job", "3",
        "--poll-interval-seconds", "0.1", "--validation-workers", "1", *extra,
    ]


def _datastore_id() -> str:
    (found,) = [d["datastoreId"] for d in medical_imaging().list_datastores()["datastoreSummaries"]
                if d["datastoreName"] == "reruns-store"]
    return str(found)


@pytest.mark.parametrize("reimport", [False, True], ids=["new-only", "reimport"])
def test_a_rerun_after_a_failed_job_starts_a_new_one(
    service: LocalService, tmp_path: Path, reimport: bool
) -> None:
    write_ct_series(tmp_path / "source" / "a", 3, series_spec("failing-a"), 16, 16)
    write_ct_series(tmp_path / "source" / "b", 3, series_spec("failing-b"), 16, 16)
    service.faults.fail_jobs = 1
    first = dicom_ingest(ingest_params(tmp_path, reimport=reimport, max_concurrent_jobs=1))
    assert first.counts["job_failed"] == 3 and first.counts["imported"] == 3

    second = dicom_ingest(ingest_params(tmp_path, reimport=reimport))

    report = pd.read_parquet(second.report_files_parquet)
    assert set(report["status"]) == {"imported"}
    assert first.datastore_id is not None
    assert len(import_jobs(first.datastore_id)) == 3
    imported = Counter(imported_by_service(first.datastore_id))
    assert len(imported) == 6 and set(imported.values()) == {1}

    # The attempt that succeeded is the one a third run gets back.
    third = dicom_ingest(ingest_params(tmp_path, reimport=reimport))
    assert len(import_jobs(first.datastore_id)) == 3
    assert third.counts["imported"] == (6 if reimport else 0)


def test_retry_from_the_shell(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_ct_series(tmp_path / "source" / "a", 3, series_spec("shell-retry"), 16, 16)
    service.faults.fail_jobs = 1
    assert main(_cli_args(tmp_path)) == 1
    # The ingestion says which flow run it is as it begins.
    (ingest_run,) = re.findall(r"Flow run ([0-9a-f-]{36}) \(", capsys.readouterr().err)

    # Selected by the start of that ID, as the report folder's name ends.
    code = main(["retry", "--datastore", "reruns-store", "--run-id", ingest_run[:8],
                 "--staging-prefix", f"s3://{BUCKET}/staging",
                 "--output-prefix", f"s3://{BUCKET}/output",
                 "--report-location", str(tmp_path / "reports"),
                 "--poll-interval-seconds", "0.1", "--validation-workers", "1"])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in out + err
    assert re.search(rf"Flow run [0-9a-f-]{{36}} \(retry run {ingest_run[:8]} ", err), err
    assert "3 files retried in 1 new import jobs" in out
    # Its report, where ingest's is said.
    (files_csv,) = re.findall(r"^Per-file report: (\S+)$", out, re.MULTILINE)
    (jobs_csv,) = re.findall(r"^Per-job report:  (\S+)$", out, re.MULTILINE)
    assert len(pd.read_csv(files_csv)) == 3 and len(pd.read_csv(jobs_csv)) == 1
    assert Counter(imported_by_service(_datastore_id())) == Counter(
        f"a/slice_{i:04d}.dcm" for i in range(3))


def test_nothing_new_says_so(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_ct_series(tmp_path / "source" / "a", 3, series_spec("nothing-new"), 16, 16)
    assert main(_cli_args(tmp_path)) == 0
    capsys.readouterr()

    assert main(_cli_args(tmp_path)) == 0
    (job,) = import_jobs(_datastore_id())
    assert (f"Nothing new: 3 files unchanged since earlier runs (imported or refused by job "
            f"{job['jobId']})") in capsys.readouterr().out

    # Given by its ID, the data store is still shown by name too.
    by_id = _cli_args(tmp_path, "--reimport")
    by_id[by_id.index("reruns-store")] = _datastore_id()
    assert main(by_id) == 0
    out = capsys.readouterr().out
    assert f"3 files already imported by job {job['jobId']}, started by an earlier run" in out
    assert f"Data store reruns-store ({_datastore_id()})" in out


def _start_cli(tmp_path: Path, service: LocalService, *extra: str) -> subprocess.Popen[str]:
    from prefect.settings import PREFECT_API_URL

    env = {**quiet_env(tmp_path / "prefect-home"), **service.env(),
           "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.Popen([sys.executable, "-m", "cli", *_cli_args(tmp_path, *extra)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_a_job(tmp_path: Path, run: subprocess.Popen[str]) -> str:
    """The ID of the job the run started, once the ledger has it."""
    deadline = time.monotonic() + 180
    while True:
        stores = medical_imaging().list_datastores()["datastoreSummaries"]
        if stores and (tmp_path / "reports" / "ledger.sqlite").exists():
            observer = RunLedger(ledger_url(None, str(tmp_path / "reports")), "observer",
                                 stores[0]["datastoreId"])
            jobs = observer.unfinished_jobs()
            if jobs:
                return jobs[0].job_id
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "the run never started its job"
        time.sleep(0.1)


def test_ctrl_c_while_a_job_runs(service: LocalService, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "source" / "a", 3, series_spec("ctrl-c"), 16, 16)
    # A second batch, which waits for the one job slot and so never starts.
    files += write_ct_series(tmp_path / "source" / "b", 3, series_spec("ctrl-c-b"), 16, 16)
    service.faults.job_duration_seconds = 120.0
    run = _start_cli(tmp_path, service, "--max-concurrent-jobs", "1")
    job_id = _wait_for_a_job(tmp_path, run)

    os.killpg(run.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    out, err = run.communicate(timeout=180)

    assert run.returncode == 130, err
    assert "Traceback" not in out + err
    assert "dicom-import retry" in err
    # It stopped waiting: the job still runs.
    job = medical_imaging().get_dicom_import_job(datastoreId=_datastore_id(), jobId=job_id)
    running = {"SUBMITTED", "IN_PROGRESS"}
    assert job["jobProperties"]["jobStatus"] in running
    (report,) = {p.parent for p in (tmp_path / "reports").rglob("files/part-*.parquet")}
    rows = pd.read_parquet(report)
    assert sorted(rows["source_uri"]) == sorted(map(str, files))
    submitted = rows["status"] == "submitted"
    assert set(rows.loc[submitted, "job_id"]) == {job_id} and submitted.sum() == 3
    assert set(rows.loc[~submitted, "status"]) == {"interrupted"}
    assert rows.loc[~submitted, "job_id"].isna().all()
    # The job is said to be running, as HealthImaging last said; the batch
    # that never started has no job ID, and nothing prints one as NaN.
    jobs = pd.read_csv(report.parent / "jobs.csv", keep_default_na=False).set_index("job_id")
    assert jobs.loc[job_id, "job_status"] in running
    assert jobs.loc["", "job_status"] == "INTERRUPTED"
    (shown,) = [line.split() for line in out.splitlines() if job_id in line]
    assert shown[2] in running and "NaN" not in out

    service.faults.job_duration_seconds = 0.0
    assert main(_cli_args(tmp_path)) == 0
    jobs_started = [j["jobId"] for j in import_jobs(_datastore_id())]
    assert len(jobs_started) == 2 and job_id in jobs_started


def test_a_rerun_right_after_a_kill_does_the_work(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_ct_series(tmp_path / "source" / "a", 3, series_spec("killed-now"), 16, 16)
    service.faults.job_duration_seconds = 3.0
    run = _start_cli(tmp_path, service)
    job_id = _wait_for_a_job(tmp_path, run)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()

    assert main(_cli_args(tmp_path)) == 0, capsys.readouterr().err
    assert [j["jobId"] for j in import_jobs(_datastore_id())] == [job_id]
    assert Counter(imported_by_service(_datastore_id())) == Counter(
        f"a/slice_{i:04d}.dcm" for i in range(3))


def test_files_held_by_a_live_run(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_ct_series(tmp_path / "source" / "a", 3, series_spec("held"), 16, 16)
    service.faults.job_duration_seconds = 120.0
    run = _start_cli(tmp_path, service)
    try:
        _wait_for_a_job(tmp_path, run)
        code = main(_cli_args(tmp_path))
        err = capsys.readouterr().err
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()

    assert code == 3
    (line,) = [line for line in err.splitlines() if "held by run" in line]
    assert "3 files are held by run" in line and f"(pid {run.pid})" in line
    assert "last beat" in line and "free at" in line


def test_a_migration_with_nothing_new_says_so_and_counts_no_import(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_ct_series(tmp_path / "source" / "a", 3, series_spec("migrated-before"), 16, 16)
    assert main(_cli_args(tmp_path)) == 0
    capsys.readouterr()

    # Every file unchanged since: no ingest run is started, and none needs a worker.
    code = main(["migrate", str(tmp_path / "source"), "--datastore", "reruns-store",
                 "--staging-prefix", f"s3://{BUCKET}/staging",
                 "--output-prefix", f"s3://{BUCKET}/output",
                 "--report-location", str(tmp_path / "reports")])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert re.search(r"Flow run [0-9a-f-]{36} \(migrate ", err), err
    assert "Nothing new: 3 files unchanged since earlier runs" in out
    assert not re.search(r"^\s+imported\s", out, re.MULTILINE), out
    assert len(import_jobs(_datastore_id())) == 1
