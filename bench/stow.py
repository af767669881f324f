"""STOW-RS against import jobs, through the whole flow on the local service.

Latency: one study of 100 512x512 CT slices, from a folder to verified in
the data store (one ``dicom_ingest`` call: validate, land, read the outcome,
verify the metadata, report), by an import job (the baseline: production's
5 s first poll interval, and 0.5 s) and by STOW-RS. Throughput: 2,000 such
slices (20 studies), both ways. Each run is a fresh process against a
Prefect server and a local service started once, a data store of its own.
Memory: the local service's peak RSS (its process tree, psutil) while it
takes one STOW-RS request of 100 MB and one of 1 GB (AWS's limit), against
its RSS at rest; the service keeps its state on disk (``--data-dir``), so
what it stores is not counted as memory.

    nice .venv/bin/python -m bench.stow [--repeats 5] [--throughput-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    active_datastore,
    clients,
    local_service,
    local_service_process,
    median,
    prefect_server,
    print_table,
    quiet_prefect_env,
    run_child,
    service_env,
)
from emulator.samples import series_spec, write_ct_series

BUCKET = "bench-stow"
SLICES = 100
# (label, landing, first poll interval): the first is the baseline.
WAYS = (("import job, 5 s polls (baseline)", "job", 5.0),
        ("import job, 0.5 s polls", "job", 0.5),
        ("STOW-RS", "stow", 0.5))
MB = 1000**2


def child(source: str, reports: str, datastore: str, landing: str, poll: float) -> None:
    from config.settings import LandingMode
    from flows.ingest import dicom_ingest
    from flows.parameters import IngestParameters

    params = IngestParameters(
        source=source, datastore=datastore, landing=LandingMode(landing),
        staging_prefix=f"s3://{BUCKET}/staging", output_prefix=f"s3://{BUCKET}/output",
        report_location=reports, poll_interval_seconds=poll,
    )
    started = time.perf_counter()
    result = dicom_ingest(params)
    wall = time.perf_counter() - started
    print(json.dumps({"wall": wall, "imported": result.counts["imported"],
                      "verified": result.verification.get("verified", 0),
                      "jobs": result.jobs, "requests": result.stow_requests}))


def write_studies(folder: Path, studies: int) -> int:
    """``studies`` studies of one series of SLICES slices; their bytes."""
    for number in range(studies):
        write_ct_series(folder / f"study-{number:02d}", SLICES,
                        spec=series_spec(f"bench-stow-{folder.name}-{number}"))
    return sum(p.stat().st_size for p in folder.rglob("*.dcm"))


def timed_runs(
    sources: dict[str, Path], repeats: int, root: Path,
    ways: tuple[tuple[str, str, float], ...],
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Each way on each source ``repeats`` times, interleaved: a slow
    moment of the machine falls on all of them alike."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with prefect_server(root / "prefect") as api, local_service() as endpoint:
        mi, s3 = clients(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        env = {**quiet_prefect_env(root / "prefect"), **service_env(endpoint),
               "PREFECT_API_URL": api}
        for repeat in range(repeats):
            for name, source in sources.items():
                for label, landing, poll in ways:
                    datastore_id = active_datastore(mi, f"stow-{name}-{landing}-{poll}-{repeat}")
                    result = run_child(
                        [sys.executable, "-m", "bench.stow", "--child", str(source),
                         "--reports", str(root / f"reports-{datastore_id}"),
                         "--datastore", datastore_id, "--landing", landing, "--poll", str(poll)],
                        env)
                    files = sum(1 for _ in source.rglob("*.dcm"))
                    if result["verified"] != files:
                        raise RuntimeError(f"{label}: {result['verified']} of {files} verified")
                    runs.setdefault((name, label), []).append(result)
    return runs


def print_runs(
    title: str, runs: dict[tuple[str, str], list[dict[str, Any]]], name: str, files: int,
    size: int, repeats: int, ways: tuple[tuple[str, str, float], ...],
) -> None:
    base = median([r["wall"] for r in runs[(name, ways[0][0])]])
    rows = []
    for label, _, _ in ways:
        results = runs[(name, label)]
        seconds = median([r["wall"] for r in results])
        rows.append((label, files, size / MB, seconds, min(r["wall"] for r in results),
                     files / seconds, size / MB / seconds,
                     f"{results[0]['jobs']} / {results[0]['requests']}", seconds / base))
    print_table(f"{title} (median of {repeats})",
                ["landing", "files", "MB", "median s", "best s", "files/s", "MB/s",
                 "jobs / requests", "time vs baseline"], rows)


class PeakRss:
    """The highest RSS of a process and its children, sampled every 10 ms
    from another thread while the block runs."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def rss(self) -> int:
        total = 0
        for process in (self.process, *self.process.children(recursive=True)):
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.rss())
            self._done.wait(0.01)

    def __enter__(self) -> PeakRss:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def service_memory(folder: Path, root: Path) -> None:
    """One request of about 100 MB, then one of about 1 GB, to a service at rest."""
    from tasks.statuses import FileValidity
    from tasks.stow_body import request_body
    from tasks.stow_client import StowClient
    from tasks.validate import ValidationRecord

    records = [ValidationRecord(str(p), p.name, p.stat().st_size, FileValidity.VALID)
               for p in sorted(folder.rglob("*.dcm"))]
    rows = []
    flags = ("--data-dir", str(root / "service-state"))
    with local_service_process(*flags) as (endpoint, pid):
        os.environ.update(service_env(endpoint))
        mi, _ = clients(endpoint)
        datastore_id = active_datastore(mi, "stow-memory")
        client = StowClient.for_environment(1)
        sampler = PeakRss(pid)
        time.sleep(1.0)
        rest = sampler.rss()
        rows.append(("at rest (baseline)", 0, 0.0, 0.0, rest / MB, 0.0, "-"))
        for target in (100 * MB, 1000 * MB):
            chosen, total = [], 0
            for record in records:
                if total + record.size + 200 > target - 4096:
                    break
                chosen.append(record)
                total += record.size + 200
            # One study per request: the slices of the first study alone would
            # not reach 1 GB, so the request goes to /studies (StoreDICOM).
            url = f"{client.endpoint}/datastore/{datastore_id}/studies"
            with request_body(chosen, "memory") as body, PeakRss(pid) as peak:
                started = time.perf_counter()
                response = client.store(url, body)
                seconds = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
            rows.append((f"one STOW-RS request of {body.length / MB:,.0f} MB", len(chosen),
                         body.length / MB, seconds, peak.peak / MB, (peak.peak - rest) / MB,
                         f"{(peak.peak - rest) / body.length:.3f}"))
    print_table("Local service memory while it takes one STOW-RS request (process tree RSS)",
                ["request", "instances", "body MB", "s", "peak RSS MB", "above rest MB",
                 "above rest / body"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--throughput-repeats", type=int, default=3)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--reports", help=argparse.SUPPRESS)
    parser.add_argument("--datastore", help=argparse.SUPPRESS)
    parser.add_argument("--landing", help=argparse.SUPPRESS)
    parser.add_argument("--poll", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.reports, args.datastore, args.landing, args.poll)
        return
    print(f"Load average at start (1, 5, 15 min): {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-stow-") as tmp:
        root = Path(tmp)
        study_bytes = write_studies(root / "study", 1)
        many_bytes = write_studies(root / "many", args.studies)
        runs = timed_runs({"study": root / "study"}, args.repeats, root, WAYS)
        print_runs("One study of 100 512x512 CT slices, folder to verified", runs, "study",
                   SLICES, study_bytes, args.repeats, WAYS)
        ways = (WAYS[0], WAYS[2])
        runs = timed_runs({"many": root / "many"}, args.throughput_repeats, root, ways)
        print_runs(f"{args.studies * SLICES:,} 512x512 CT slices ({args.studies} studies), "
                   "folder to verified", runs, "many", args.studies * SLICES, many_bytes,
                   args.throughput_repeats, ways)
        service_memory(root / "many", root)
    print(f"Load average at the end (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()
