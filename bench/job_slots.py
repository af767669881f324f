"""Import job slots: how much of the time all slots hold a running job.

20 batches queued under a limit of 5 concurrent jobs, the local service
keeping each job IN_PROGRESS for a few seconds (``--job-duration``). The
occupancy comes from the service's own record of each job (submittedAt and
endedAt through ListDICOMImportJobs and GetDICOMImportJob), not from the
flow's. Baseline, side by side on the same staged batches: a plain loop of 5
threads that start a job, poll it every ``--poll`` seconds and take the next
batch. Occupancy is measured while batches were still waiting for a slot
(the target) and over the whole span, whose tail cannot be full: the last
jobs end one by one with nothing left to start.

    .venv/bin/python -m bench.job_slots [--job-duration 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from queue import Empty, Queue
from typing import Any

from bench.common import (
    ROLE,
    active_datastore,
    clients,
    local_service,
    median,
    prefect_server,
    print_table,
    quiet_prefect_env,
    run_child,
    service_env,
)
from emulator.samples import series_spec, write_ct_series

BUCKET = "bench-slots"
BATCHES = 20
SLOTS = 5
FILES_PER_BATCH = 5


def occupancy(intervals: Sequence[tuple[float, float]], slots: int) -> dict[str, float]:
    """Fractions of time with every slot holding a job: while batches were
    queued (first to last submission) and from first submission to last end."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    first = min(start for start, _ in intervals)
    last_start = max(start for start, _ in intervals)
    last_end = max(end for _, end in intervals)
    full_queued = full_span = busy_area = 0.0
    running = 0
    previous = first
    for moment, change in events:
        if running >= slots:
            full_span += moment - previous
            full_queued += max(0.0, min(moment, last_start) - previous)
        busy_area += running * (moment - previous)
        running += change
        previous = moment
    return {
        "queued": full_queued / (last_start - first) if last_start > first else 1.0,
        "span": full_span / (last_end - first),
        "mean_busy": busy_area / (last_end - first) / slots,
        "seconds": last_end - first,
    }


def job_intervals(mi: Any, datastore_id: str) -> list[tuple[float, float]]:
    pages = mi.get_paginator("list_dicom_import_jobs").paginate(datastoreId=datastore_id)
    intervals = []
    for page in pages:
        for summary in page["jobSummaries"]:
            job = mi.get_dicom_import_job(datastoreId=datastore_id, jobId=summary["jobId"])
            properties = job["jobProperties"]
            intervals.append((_epoch(properties["submittedAt"]), _epoch(properties["endedAt"])))
    if len(intervals) != BATCHES:
        raise RuntimeError(f"expected {BATCHES} jobs, found {len(intervals)}")
    return intervals


def _epoch(value: datetime | float) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def run_flow(source: Path, env: dict[str, str], datastore: str, poll: float) -> dict[str, Any]:
    """The ingest flow in a child process (a fresh Prefect client, as a worker runs it)."""
    command = [sys.executable, "-m", "bench.job_slots", "--child", str(source),
               "--datastore", datastore, "--poll", str(poll)]
    return run_child(command, env)


def child(source: str, datastore: str, poll: float) -> None:
    from flows.ingest import dicom_ingest
    from flows.parameters import IngestParameters

    result = dicom_ingest(IngestParameters(
        source=source,
        datastore=datastore,
        staging_prefix=f"s3://{BUCKET}/staging",
        output_prefix=f"s3://{BUCKET}/output",
        report_location=str(Path(source).parent / f"reports-{datastore}"),
        max_files_per_job=FILES_PER_BATCH,
        max_concurrent_jobs=SLOTS,
        poll_interval_seconds=poll,
        validation_workers=1,
    ))
    print(json.dumps({"datastore_id": result.datastore_id, "run_id": result.run_id,
                      "jobs": result.jobs}))


def plain_loop(mi: Any, s3: Any, staged_run: str, poll: float) -> str:
    """Five threads, each: start a job on the next batch, poll until it ends."""
    datastore_id = active_datastore(mi, f"plain-{uuid.uuid4().hex[:8]}")
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"staging/{staged_run}/", Delimiter="/")
    queue: Queue[str] = Queue()
    for prefix in listing.get("CommonPrefixes", []):
        queue.put(prefix["Prefix"])

    def worker() -> None:
        while True:
            try:
                prefix = queue.get_nowait()
            except Empty:
                return
            job_id = mi.start_dicom_import_job(
                datastoreId=datastore_id, dataAccessRoleArn=ROLE,
                clientToken=uuid.uuid4().hex, inputS3Uri=f"s3://{BUCKET}/{prefix}",
                outputS3Uri=f"s3://{BUCKET}/plain-output/",
            )["jobId"]
            while mi.get_dicom_import_job(datastoreId=datastore_id, jobId=job_id)[
                "jobProperties"
            ]["jobStatus"] not in ("COMPLETED", "FAILED"):
                time.sleep(poll)

    threads = [threading.Thread(target=worker) for _ in range(SLOTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return datastore_id


def measure(args: argparse.Namespace, root: Path) -> dict[str, list[dict[str, float]]]:
    source = root / "source"
    for index in range(BATCHES):
        write_ct_series(source / f"s{index:02d}", FILES_PER_BATCH,
                        spec=series_spec(f"slots-{index}"), rows=8, columns=8)
    results: dict[str, list[dict[str, float]]] = {"flow": [], "plain": []}
    flags = ("--job-duration", str(args.job_duration), "--import-workers", str(2 * SLOTS))
    with prefect_server(root / "prefect") as api, local_service(*flags) as endpoint:
        env = {**quiet_prefect_env(root / "prefect"), **service_env(endpoint),
               "PREFECT_API_URL": api}
        mi, s3 = clients(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        for repeat in range(args.repeats):
            flow = run_flow(source, env, f"slots-{repeat}", args.poll)
            results["flow"].append(occupancy(job_intervals(mi, flow["datastore_id"]), SLOTS))
            plain = plain_loop(mi, s3, flow["run_id"], args.poll)
            results["plain"].append(occupancy(job_intervals(mi, plain), SLOTS))
    return results


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    ideal = BATCHES / SLOTS * args.job_duration
    names = {"flow": "dicom_ingest (ours)", "plain": "plain loop, 5 threads (baseline)"}
    base = {key: median([r[key] for r in results["plain"]]) for key in results["plain"][0]}
    rows = []
    for name, runs in results.items():
        value = {key: median([r[key] for r in runs]) for key in runs[0]}
        rows.append((names[name], value["queued"], value["span"], value["mean_busy"],
                     value["seconds"], value["seconds"] / ideal,
                     value["queued"] / base["queued"]))
    print_table(
        f"Import job slots: {BATCHES} batches, {SLOTS} slots, jobs of {args.job_duration:g} s, "
        f"status polled from every {args.poll:g} s (median of {args.repeats})",
        ["orchestrator", "all busy while queued", "all busy over span", "mean slots busy",
         "span s", "span vs ideal", "while queued vs baseline"],
        rows,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job-duration", type=float, default=3.0)
    parser.add_argument("--poll", type=float, default=0.1,
                        help="first (flow) or every (baseline) status check interval")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--datastore", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.datastore, args.poll)
        return
    with tempfile.TemporaryDirectory(prefix="bench-slots-") as tmp:
        report(measure(args, Path(tmp)), args)


if __name__ == "__main__":
    main()
