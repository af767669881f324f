"""Scale: memory and time per file as the source grows, windows against one window.

The full pipeline on the local service (10,000 and 100,000 files by default)
and a dry run (discover, validate, batch, ledger, report; 10,000 and 1,000,000
files), each in a fresh process against one Prefect server, as a worker runs a
flow. Each size runs twice side by side: in windows of ``--window-files``
(the default of the flow), and as one window holding the whole source (what
every run did before windows: the baseline). Peak RSS comes from
``getrusage``; the pipeline's own time is the wall time minus staging and
the wait for import jobs (the service's time, not ours).

Targets (issue 12): peak RSS at 100,000 files <= 1.2x that at 10,000; the
1,000,000-file dry run <= 1.3x the 10,000 one; pipeline time per file at the
largest size <= 1.1x that at 10,000.

    .venv/bin/python -m bench.scale [--sizes 10000 100000] [--dry-sizes 10000 1000000]
        [--repeats 1] [--baseline-up-to 100000] [--corpus DIR]
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
from bench.corpus import write_stamped_corpus

BUCKET = "bench-scale"
NOT_OURS = ("stage", "import")


def child(source: str, reports: str, datastore: str, window_files: int, dry_run: bool) -> None:
    from flows.ingest import dicom_ingest
    from flows.parameters import IngestParameters

    params = IngestParameters(
        source=source, datastore=datastore, staging_prefix=f"s3://{BUCKET}/staging",
        output_prefix=f"s3://{BUCKET}/output", report_location=reports,
        poll_interval_seconds=0.5, window_files=window_files, dry_run=dry_run,
        max_concurrent_jobs=20,
    )
    started = time.perf_counter()
    result = dicom_ingest(params)
    wall = time.perf_counter() - started
    done = result.counts["validated" if dry_run else "imported"]
    print(json.dumps({
        "wall": wall, "timings": result.timings, "files": result.files, "done": done,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def measure(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    corpus = Path(args.corpus) if args.corpus else root / "corpus"
    plans = [(False, size) for size in args.sizes] + [(True, size) for size in args.dry_sizes]
    for size in sorted({size for _, size in plans}):
        folder = corpus / f"files-{size}"
        if not (folder / ".complete").exists():
            write_stamped_corpus(folder, size)
            (folder / ".complete").touch()
    rows: list[dict[str, Any]] = []
    with prefect_server(root / "prefect") as api, local_service() as endpoint:
        mi, s3 = clients(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        env = {**quiet_prefect_env(root / "prefect"), **service_env(endpoint),
               "PREFECT_API_URL": api}
        for repeat in range(args.repeats):
            for dry_run, size in plans:
                windows = [args.window_files]
                if args.window_files < size <= args.baseline_up_to:
                    windows.append(size)
                for window_files in windows:
                    name = f"scale-{'dry' if dry_run else 'full'}-{size}-{window_files}-{repeat}"
                    datastore = name if dry_run else active_datastore(mi, name)
                    command = [sys.executable, "-m", "bench.scale", "--child",
                               str(corpus / f"files-{size}"), "--reports", str(root / name),
                               "--datastore", datastore, "--window-files", str(window_files),
                               *(["--dry-run"] if dry_run else [])]
                    result = run_child(command, env)
                    if result["done"] != size:
                        raise RuntimeError(f"{result['done']} of {size} files done ({name})")
                    rows.append({"dry_run": dry_run, "size": size,
                                 "window_files": window_files, **result})
    return rows


def report(rows: list[dict[str, Any]], window_files: int) -> None:
    table = []
    for dry_run in (False, True):
        groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for run in rows:
            if run["dry_run"] is dry_run:
                groups.setdefault((run["size"], run["window_files"]), []).append(run)
        if not groups:
            continue
        smallest = min(size for size, _ in groups)
        base = groups[(smallest, window_files)]
        base_rss = median([r["peak_rss_mb"] for r in base])
        base_per_file = median([_ours(r) / r["files"] * 1e6 for r in base])
        for (size, files_per_window), runs in sorted(
                groups.items(), key=lambda item: (item[0][1] != window_files, item[0][0])):
            rss = median([r["peak_rss_mb"] for r in runs])
            per_file = median([_ours(r) / r["files"] * 1e6 for r in runs])
            table.append([
                "dry run" if dry_run else "full", f"{size:,}",
                f"windows of {window_files:,}" if files_per_window == window_files
                else "one window (baseline)",
                median([r["wall"] for r in runs]), rss, rss / base_rss, per_file,
                per_file / base_per_file])
    print_table(
        f"Scale: one process, windows of {window_files:,} files against one window "
        f"(ratios against windows at the smallest size)",
        ["pipeline", "files", "run as", "wall s", "peak RSS MB", "RSS ratio",
         "own µs per file", "per-file ratio"], table)


def _ours(run: dict[str, Any]) -> float:
    """Wall time less staging and the wait for import jobs."""
    return float(run["wall"]) - sum(run["timings"].get(stage, 0.0) for stage in NOT_OURS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--dry-sizes", type=int, nargs="*", default=[10_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--window-files", type=int, default=10_000)
    parser.add_argument("--baseline-up-to", type=int, default=100_000,
                        help="largest size also run as one window (it holds every file)")
    parser.add_argument("--corpus", help="folder to keep the generated files in between runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--reports", help=argparse.SUPPRESS)
    parser.add_argument("--datastore", help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.reports, args.datastore, args.window_files, args.dry_run)
        return
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        report(measure(args, Path(tmp)), args.window_files)


if __name__ == "__main__":
    main()
