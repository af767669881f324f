"""What a run did, told on the console: counts by status, whether anything
was new, failures grouped by reason with a few file names (the CSV keeps the
rest), files that landed in non-primary image sets and what to run about
them, the jobs, and where the report is. No PHI: paths, UIDs, element names
and counts."""

from __future__ import annotations

import os
import shlex
from collections import Counter

import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds

from config.settings import get_settings
from flows.ingest import IngestResult
from flows.parameters import IngestParameters
from tasks.conflicts import element_label
from tasks.locations import filesystem_for
from tasks.statuses import FileStatus

_NAMES_PER_REASON = 3
_JOBS_SHOWN = 20
_IMAGE_SETS_SHOWN = 10
# Not listed as failures (already_imported has a line of its own).
_SUCCESSES = {FileStatus.IMPORTED.value, FileStatus.IMPORTED_WITH_WARNINGS.value,
              FileStatus.VALIDATED.value, FileStatus.ALREADY_IMPORTED.value}


def datastore_label(name: str | None, datastore_id: str | None) -> str:
    if not datastore_id:
        return "(dry run)"
    return f"{name} ({datastore_id})" if name else datastore_id


def print_ingest_story(result: IngestResult, params: IngestParameters) -> None:
    source = params.source
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
    print_already_imported(result)
    if result.files:
        print_failures(result.report_files_parquet, source)
        print_non_primary(result, params.report_location)
        print_jobs(read_table(result.report_jobs_parquet), result.report_jobs_csv)
        print_report_paths(result.report_files_csv, result.report_files_parquet,
                           result.report_jobs_csv)


def print_non_primary(result: IngestResult, report_location: str) -> None:
    """Files HealthImaging put beside the primary image set of their series:
    imported, but not what viewers and DICOMweb see until an operator decides
    (``dicom-import reconcile``). The Prefect artifact says the same to the
    UI; the console is where the operator of a command is looking."""
    if not result.non_primary or not result.datastore_id:
        return
    files = sum(s.files for s in result.non_primary)
    print(f"\nNon-primary image sets: {files} files landed beside the primary image set of "
          "their series (the one viewers and DICOMweb see), differing from it in the elements "
          "named (names only; the report's conflict_attributes):")
    for landed in result.non_primary[:_IMAGE_SETS_SHOWN]:
        differing = ", ".join(element_label(k) for k in landed.elements) or (
            f"differing elements not known ({result.conflicts_unexplained})"
            if result.conflicts_unexplained
            else "differing elements not known")
        print(f"  image set {landed.image_set_id}: {landed.files} files, {differing}")
    if len(result.non_primary) > _IMAGE_SETS_SHOWN:
        print(f"  ... {len(result.non_primary) - _IMAGE_SETS_SHOWN} more in the report")
    command = ["dicom-import", "reconcile", "decisions.json", "--datastore", result.datastore_id]
    if not get_settings().ledger_url:
        # The ledger the decisions are recorded in is beside these reports.
        command += ["--report-location", os.path.abspath(os.path.expanduser(report_location))]
    print("Decide for each image set in a decisions file (README.md, \"Non-primary image "
          "sets\"), see what it would do with this command, then add --apply:")
    print(f"  {shlex.join(command)}")


def print_report_paths(files_csv: str | None, files_parquet: str, jobs_csv: str) -> None:
    print(f"\nPer-file report: {files_csv or '(no CSV: too many files)'}")
    print(f"                 {files_parquet}")
    print(f"Per-job report:  {jobs_csv}")


def print_nothing_new(result: IngestResult) -> None:
    imported = (result.counts.get(FileStatus.IMPORTED.value, 0)
                + result.counts.get(FileStatus.IMPORTED_WITH_WARNINGS.value, 0))
    if not result.files and result.skipped_unchanged:
        jobs = _some(sorted(result.jobs_of_skipped, key=lambda j: -result.jobs_of_skipped[j]))
        by = f" (imported or refused by {jobs})" if jobs else ""
        print(f"\nNothing new: {result.skipped_unchanged} files unchanged since earlier "
              f"runs{by}; --reimport imports them again.")
    elif result.jobs and len(result.jobs_from_earlier_runs) == result.jobs and imported:
        print(f"\n{imported} files already imported by {_some(result.jobs_from_earlier_runs)}, "
              "started by an earlier run; nothing new was imported.")


def print_already_imported(result: IngestResult) -> None:
    for source, count in result.already_imported_from.items():
        print(f"\n{count} files skipped as unchanged (already_imported): the data store holds "
              f"their SOP instances with the same SHA-256, imported from {source}; "
              "--reimport imports them again.")


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
    shown = jobs[["batch_id", "job_id", "job_status", "files", "imported_files"]].head(_JOBS_SHOWN)
    # A batch whose job never started has no job ID, and no counts from one: blank.
    shown = shown.astype(object).where(shown.notna(), "")
    print("\n" + shown.to_string(index=False))
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
