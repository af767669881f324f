"""End to end: small files through the whole flow on the local service.

The wall time of one ``dicom_ingest`` call, split by the flow's own stage
timings (``IngestResult.timings``: discover, validate, stage, import wait,
report); orchestration overhead is the rest (flow run start and end, data
store lookup, ledger claims, batching, task runs). Each run is a fresh
process, as a Prefect worker runs a flow, against a Prefect server and a
local service started once; the process's peak RSS is read from
``getrusage`` at the end, at 1,000 and at 10,000 files.

    .venv/bin/python -m bench.end_to_end [--sizes 1000 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
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

BUCKET = "bench-e2e"
SERIES_SIZE = 100
STAGES = ("discover", "validate", "stage", "import", "report")
LABELS = {"import": "import wait"}


def child(source: str, reports: str, datastore: str) -> None:
    from flows.ingest import dicom_ingest
    from flows.parameters import IngestParameters

    params = IngestParameters(
        source=source,
        datastore=datastore,
        staging_prefix=f"s3://{BUCKET}/staging",
        output_prefix=f"s3://{BUCKET}/output",
        report_location=reports,
        poll_interval_seconds=0.5,
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = dicom_ingest(params)
    wall = time.perf_counter() - started
    print(json.dumps({
        "wall": wall,
        "timings": result.timings,
        "files": result.files,
        "imported": result.counts["imported"],
        "jobs": result.jobs,
        # kilobytes on Linux
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_before / 1024,
    }))


def write_corpus(folder: Path, files: int) -> None:
    for index in range(0, files, SERIES_SIZE):
        write_ct_series(folder / f"s{index // SERIES_SIZE:04d}", min(SERIES_SIZE, files - index),
                        spec=series_spec(f"e2e-{folder.name}-{index}"), rows=8, columns=8)


def measure(sizes: list[int], repeats: int, root: Path) -> dict[int, list[dict[str, Any]]]:
    for size in sizes:
        write_corpus(root / f"files-{size}", size)
    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
    with prefect_server(root / "prefect") as api, local_service() as endpoint:
        mi, s3 = clients(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        env = {**quiet_prefect_env(root / "prefect"), **service_env(endpoint),
               "PREFECT_API_URL": api}
        for repeat in range(repeats):
            for size in sizes:
                # A data store per run, so nothing is skipped as already imported,
                # made ACTIVE beforehand as a production one is.
                datastore_id = active_datastore(mi, f"e2e-{size}-{repeat}")
                command = [sys.executable, "-m", "bench.end_to_end", "--child",
                           str(root / f"files-{size}"), "--reports",
                           str(root / f"reports-{size}-{repeat}"), "--datastore", datastore_id]
                result = run_child(command, env)
                if result["imported"] != size:
                    raise RuntimeError(f"{result['imported']} of {size} files imported")
                runs[size].append(result)
    return runs


def report(runs: dict[int, list[dict[str, Any]]], repeats: int) -> None:
    sizes = sorted(runs)
    rows = []
    for stage in (*STAGES, "overhead", "wall"):
        row: list[object] = [LABELS.get(stage, stage if stage != "overhead"
                                         else "orchestration overhead (the rest)")]
        for size in sizes:
            seconds = median([_seconds(run, stage) for run in runs[size]])
            share = median([_seconds(run, stage) / run["wall"] for run in runs[size]])
            row += [seconds, share]
        rows.append(row)
    header = ["stage"]
    for size in sizes:
        header += [f"{size:,} files: median s", "share of wall"]
    print_table(f"End to end on the local service, wall time by stage (median of {repeats})",
                header, rows)
    base = median([run["peak_rss_mb"] for run in runs[sizes[0]]])
    print_table(
        f"Peak RSS of the flow process (median of {repeats})",
        ["files", "peak RSS MB", "RSS before the run MB", f"vs {sizes[0]:,} files"],
        [(f"{size:,}", median([r["peak_rss_mb"] for r in runs[size]]),
          median([r["rss_before_mb"] for r in runs[size]]),
          median([r["peak_rss_mb"] for r in runs[size]]) / base) for size in sizes],
    )


def _seconds(run: dict[str, Any], stage: str) -> float:
    if stage == "wall":
        return float(run["wall"])
    if stage == "overhead":
        staged: float = sum(run["timings"].get(s, 0.0) for s in STAGES)
        return float(run["wall"]) - staged
    return float(run["timings"].get(stage, 0.0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--reports", help=argparse.SUPPRESS)
    parser.add_argument("--datastore", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.reports, args.datastore)
        return
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        report(measure(args.sizes, args.repeats, Path(tmp)), args.repeats)


if __name__ == "__main__":
    main()
