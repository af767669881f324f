"""What a run did, told on the console: counts by status, whether anything
was new, failures grouped by reason with a few file names (the CSV keeps the
rest), the jobs, and where the report is. No PHI: paths, UIDs and counts."""

from __future__ import annotations

import os
from collections import Counter

import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds

from flows.ingest import IngestResult
from tasks.locations import filesystem_for
from tasks.statuses import FileStatus

_NAMES_PER_REASON = 3
_JOBS_SHOWN = 20
_SUCCESSES = {FileStatus.IMPORTED.value, FileStatus.IMPORTED_WITH_WARNINGS.value,
              FileStatus.VALIDATED.value}


def datastore_label(name: str | None, datastore_id: str | None) -> str:
    if not datastore_id:
        return "(dry run)"
    return f"{name} ({datastore_id})" if name else datastore_id


def print_ingest_story(result: IngestResult, source: str) -> None:
    label = datastore_label(result.datastore_name, result.datastore_id)
    requests = f", {result.stow_requests} STOW-RS requests" if result.stow_requests else ""
    print(f"\nData store {label}: {result.files} files processed, {result.jobs} import jobs"
          f"{requests}")
    counts = {status: count for status, count in result.counts.items() if count}
    skipped = {
        "skipped (unchanged)": result.skipped_unchanged,
        "skipped (given up)": result.given_up,
        "held by another run": result.claimed_by_other_runs,
    }
    rows = {**counts, **{name: n for name, n in skipped.items() if n}}
    if rows:
        width = max(len(name) for name in rows)
        for name, count in rows.items():
            print(f"  {name:<{width}}  {count:>7}")
    print_nothing_new(result)
    if result.files:
        print_failures(result.report_files_parquet, source)
        print_jobs(read_table(result.report_jobs_parquet), result.report_jobs_csv)
        print(f"\nPer-file report: {result.report_files_csv or '(no CSV: too many files)'}")
        print(f"                 {result.report_files_parquet}")
        print(f"Per-job report:  {result.report_jobs_csv}")


def print_nothing_new(result: IngestResult) -> None:
    imported = (result.counts.get(FileStatus.IMPORTED.value, 0)
                + result.counts.get(FileStatus.IMPORTED_WITH_WARNINGS.value, 0))
    if not result.files and result.skipped_unchanged:
        jobs = _some(sorted(result.jobs_of_skipped, key=lambda j: -result.jobs_of_skipped[j]))
        by = f" (imported or refused by {jobs})" if jobs else ""
        print(f"\nNothing new: {result.skipped_unchanged} files unchanged since earlier "
              f"runs{by}.")
    elif result.jobs and len(result.jobs_from_earlier_runs) == result.jobs and imported:
        print(f"\n{imported} files already imported by {_some(result.jobs_from_earlier_runs)}, "
              "started by an earlier run; nothing new was imported.")


def print_failures(report: str, source: str) -> None:
    """Read batch by batch, failures only: a report can hold millions of rows."""
    counts: Counter[tuple[str, str]] = Counter()
    names: dict[tuple[str, str], list[str]] = {}
    failures = ~pc.field("status").isin(sorted(_SUCCESSES))
    for rows in report_dataset(report).to_batches(
            columns=["source_uri", "status", "reason_code", "error_type"], filter=failures):
        frame = rows.to_pandas()
        why = frame["reason_code"].fillna(frame["error_type"]).fillna("")
        for (status, reason), uris in frame.assign(why=why).groupby(["status", "why"],
                                                                    sort=False)["source_uri"]:
            key = (str(status), str(reason))
            counts[key] += len(uris)
            shown = names.setdefault(key, [])
            shown += [_short(uri, source) for uri in uris.head(_NAMES_PER_REASON - len(shown))]
    if not counts:
        return
    print("\nNot imported, by reason:")
    for (status, reason), count in counts.most_common():
        shown = names[(status, reason)]
        more = f" and {count - len(shown)} more" if count > len(shown) else ""
        print(f"  {status} {reason}".rstrip() + f": {count} ({', '.join(shown)}{more})")


def print_jobs(jobs: pd.DataFrame, jobs_csv: str) -> None:
    if jobs.empty:
        return
    shown = jobs[["batch_id", "job_id", "job_status", "files", "imported_files"]]
    print("\n" + shown.head(_JOBS_SHOWN).to_string(index=False))
    if len(jobs) > _JOBS_SHOWN:
        print(f"... {len(jobs) - _JOBS_SHOWN} more in {jobs_csv}")


def read_table(uri: str) -> pd.DataFrame:
    """A report table, whole: a parquet file or a dataset folder of parts."""
    frame: pd.DataFrame = report_dataset(uri).to_table().to_pandas()
    return frame


def report_dataset(uri: str) -> ds.Dataset:
    fs, path = filesystem_for(uri)
    return ds.dataset(path, filesystem=fs, format="parquet")


def _short(uri: str, source: str) -> str:
    prefix = source.rstrip("/") + "/"
    return uri[len(prefix):] if uri.startswith(prefix) else os.path.basename(uri)


def _some(job_ids: list[str]) -> str:
    shown = ", ".join(f"job {job_id}" for job_id in job_ids[:3])
    return shown + (f" and {len(job_ids) - 3} more" if len(job_ids) > 3 else "")
