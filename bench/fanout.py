"""Fan-out: one migration of the same files by 1, 2 and 4 workers on one work pool.

Each configuration gets a process work pool with that many ``prefect worker
start`` processes, the manual ingest deployment on it, and a data store of
its own (so nothing is skipped as already imported); ``dicom-import migrate
--workers N`` then runs N ingest runs that claim windows of one inventory.
Measured per configuration, side by side in one run:

- wall time of the migration command;
- the service's import time: the time during which at least one import job
  was in flight (the union of the jobs' submittedAt..endedAt, from the
  service's own job list), and the rest, everything but it (inventory,
  validation, staging, orchestration, waiting for a worker);
- the speed-up of that rest against one worker, the baseline;
- the highest number of jobs in flight the service saw, which must never pass
  ``--max-jobs-in-flight``.

    .venv/bin/python -m bench.fanout [--files 2000] [--workers 1 2 4]

The issue's size (100,000 files; about an hour here, most of it the local
service importing):

    .venv/bin/python -m bench.fanout --files 100000 --window-files 10000 \\
        --max-files-per-job 1000 --max-jobs-in-flight 20
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import (
    clients,
    local_service,
    prefect_server,
    print_table,
    quiet_prefect_env,
    service_env,
)
from emulator.samples import series_spec, write_ct_series

BUCKET = "bench-fanout"
SERIES_SIZE = 100
REPO = Path(__file__).resolve().parents[1]


def write_corpus(folder: Path, files: int) -> None:
    for index in range(0, files, SERIES_SIZE):
        write_ct_series(folder / f"s{index // SERIES_SIZE:05d}", min(SERIES_SIZE, files - index),
                        spec=series_spec(f"fanout-{index}"), rows=8, columns=8)


def in_flight(intervals: Sequence[tuple[float, float]]) -> tuple[float, int]:
    """Seconds with at least one job in flight, and the most at once."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    busy = 0.0
    previous = events[0][0] if events else 0.0
    for moment, change in events:
        if running:
            busy += moment - previous
        running += change
        most = max(most, running)
        previous = moment
    return busy, most


def job_intervals(mi: Any, datastore_id: str) -> list[tuple[float, float]]:
    pages = mi.get_paginator("list_dicom_import_jobs").paginate(datastoreId=datastore_id)
    return [(_epoch(job["submittedAt"]), _epoch(job["endedAt"]))
            for page in pages for job in page["jobSummaries"]]


def _epoch(value: datetime | float) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


@contextmanager
def workers(count: int, pool: str, env: dict[str, str], logs: Path) -> Iterator[None]:
    """``count`` process workers polling ``pool``, each in a session of its
    own, stopped with everything they started when the block ends."""
    processes = []
    for number in range(count):
        with (logs / f"{pool}-worker-{number}.log").open("wb") as out:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type",
                 "process"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True))
    try:
        yield
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)


def prefect(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env, check=True,
                   capture_output=True, text=True, timeout=600)


def migrate(source: Path, env: dict[str, str], args: argparse.Namespace,
            count: int, deployment: str, datastore: str) -> float:
    command = [sys.executable, "-m", "cli", "migrate", str(source), "--datastore", datastore,
               "--create-datastore",
               "--workers", str(count), "--ingest-deployment", deployment,
               "--window-files", str(args.window_files),
               "--max-files-per-job", str(args.max_files_per_job),
               "--max-jobs-in-flight", str(args.max_jobs_in_flight),
               "--check-interval-seconds", "2"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the migration with {count} workers failed:\n{done.stdout[-3000:]}"
                           f"{done.stderr[-3000:]}")
    return wall


def measure(args: argparse.Namespace, root: Path) -> list[dict[str, float]]:
    source = root / "source"
    write_corpus(source, args.files)
    results = []
    flags = ("--job-duration", str(args.job_duration), "--import-workers", "4")
    with prefect_server(root / "prefect") as api, local_service(*flags) as endpoint:
        mi, s3 = clients(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        env = {**quiet_prefect_env(root / "prefect"), **service_env(endpoint),
               "PREFECT_API_URL": api, "PYTHONPATH": str(REPO), "PWD": str(REPO),
               "PREFECT_WORKER_QUERY_SECONDS": "2",
               "DICOM_IMPORT_STAGING_PREFIX": f"s3://{BUCKET}/staging",
               "DICOM_IMPORT_OUTPUT_PREFIX": f"s3://{BUCKET}/output",
               "DICOM_IMPORT_REPORT_LOCATION": str(root / "reports"),
               "DICOM_IMPORT_POLL_INTERVAL_SECONDS": "0.5",
               "DICOM_IMPORT_VALIDATION_WORKERS": "1"}
        # One pool for every configuration, so each migration's children can
        # only land on that configuration's workers (started, then stopped).
        prefect(env, "work-pool", "create", "dicom-import", "--type", "process")
        prefect(env, "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "manual",
                "--no-prompt")
        for count in args.workers:
            datastore = f"fanout-{count}"
            with workers(count, "dicom-import", env, root):
                wall = migrate(source, env, args, count, "dicom-ingest/manual", datastore)
            datastore_id = next(d["datastoreId"] for d in
                                mi.list_datastores()["datastoreSummaries"]
                                if d["datastoreName"] == datastore)
            importing, most = in_flight(job_intervals(mi, datastore_id))
            results.append({"workers": count, "wall": wall, "importing": importing,
                            "rest": wall - importing, "most_in_flight": most})
    return results


def report(results: list[dict[str, float]], args: argparse.Namespace) -> None:
    base = results[0]["rest"]
    print_table(
        f"Fan-out: {args.files:,} files, windows of {args.window_files:,}, jobs of "
        f"{args.max_files_per_job} files lasting at least {args.job_duration:g} s, at most "
        f"{args.max_jobs_in_flight} in flight (baseline: {results[0]['workers']:.0f} worker)",
        ["workers", "wall s", "service importing s", "everything else s",
         "speed-up of everything else", "most jobs in flight seen", "limit"],
        [(f"{r['workers']:.0f}", r["wall"], r["importing"], r["rest"], base / r["rest"],
          f"{r['most_in_flight']:.0f}", args.max_jobs_in_flight) for r in results],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--window-files", type=int, default=250)
    parser.add_argument("--max-files-per-job", type=int, default=50)
    parser.add_argument("--max-jobs-in-flight", type=int, default=4)
    parser.add_argument("--job-duration", type=float, default=1.0,
                        help="least seconds the local service keeps each job IN_PROGRESS")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        report(measure(args, Path(tmp)), args)


if __name__ == "__main__":
    main()
