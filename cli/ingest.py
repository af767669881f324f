"""``dicom-import ingest``: run the ingest flow once from a shell.

The options are generated from ``IngestParameters`` so the CLI, the Prefect
UI form and the settings file can never disagree on a name or a meaning; an
option left out falls back to the settings (env or ``dicom-import.toml``).
Failures end as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, get_args

import pandas as pd
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from cli.progress import ProgressDisplay
from flows.ingest import IngestResult, dicom_ingest
from flows.parameters import IngestParameters
from tasks.locations import filesystem_for
from tasks.report import FileStatus

# Statuses that mean the pipeline, not the input, let a file down.
# output_missing: the job's output is gone and the data store does not hold
# the file; until retry_failed settles it, it is not accounted for.
FAILED_STATUSES = (FileStatus.IMPORT_FAILED, FileStatus.JOB_FAILED, FileStatus.TIMED_OUT,
                   FileStatus.OUTPUT_MISSING)
EXIT_ERROR = 2
EXIT_FILES_FAILED = 1


def _option_type(annotation: Any) -> type:
    kinds = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
    return kinds[0]


def _help(field: FieldInfo) -> str:
    """argparse formats help with %: a description saying "2%" must not break it."""
    return (field.description or "").replace("%", "%%")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="Validate, stage and import DICOM files once, and report on every file.",
        description="Run the ingest flow once and print its summary. Options left out "
        "come from the settings (DICOM_IMPORT_* or dicom-import.toml). Exit status: 0 when "
        f"every file is accounted for, {EXIT_FILES_FAILED} when some failed in the import, "
        f"{EXIT_ERROR} when the run itself could not go on.",
    )
    parser.add_argument("source", help=_help(IngestParameters.model_fields["source"]))
    for name, field in IngestParameters.model_fields.items():
        if name == "source":
            continue
        flag = f"--{name.replace('_', '-')}"
        kind = _option_type(field.annotation)
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=_help(field))
        else:
            parser.add_argument(flag, dest=name, type=kind, default=None, help=_help(field))
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    given = {
        name: value
        for name, value in vars(args).items()
        if name in IngestParameters.model_fields and value is not None
    }
    try:
        params = IngestParameters(**given)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'parameters'}: {e['msg']}" for e in error.errors()
        )
        print(f"dicom-import ingest: {problems}", file=sys.stderr)
        return EXIT_ERROR
    return run_ingest(params)


def run_ingest(params: IngestParameters) -> int:
    """Run the flow with a progress line, then print the summary."""
    with ProgressDisplay(f"Ingesting {params.source}"):
        state = dicom_ingest(params, return_state=True)
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        print(f"dicom-import ingest: {describe(error)}", file=sys.stderr)
        return EXIT_ERROR
    result: IngestResult = state.result()
    print_summary(result)
    failed = sum(result.counts.get(status.value, 0) for status in FAILED_STATUSES)
    return EXIT_FILES_FAILED if failed else 0


def describe(error: BaseException | Any) -> str:
    """One line an operator can act on."""
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        return (
            f"{error.operation_name} was refused: {details.get('Code')}: "
            f"{details.get('Message')}"
        )
    if isinstance(error, BotoCoreError):
        return f"AWS client error: {error}"
    if isinstance(error, BaseException):
        return f"{error}" if str(error) else type(error).__name__
    return str(error)


def print_summary(result: IngestResult) -> None:
    print(f"\nData store {result.datastore_id or '(dry run)'}: {result.files} files, "
          f"{result.jobs} import jobs")
    width = max(len(status) for status in result.counts)
    for status, count in result.counts.items():
        if count:
            print(f"  {status:<{width}}  {count:>7}")
    if result.skipped_unchanged:
        print(f"  {'skipped (unchanged)':<{width}}  {result.skipped_unchanged:>7}")
    if result.claimed_by_other_runs:
        print(f"  {'taken by another run':<{width}}  {result.claimed_by_other_runs:>7}")
    jobs = read_table(result.report_jobs_parquet)
    if not jobs.empty:
        shown = jobs[["batch_id", "job_id", "job_status", "files", "imported_files"]]
        print("\n" + shown.head(20).to_string(index=False))
        if len(jobs) > 20:
            print(f"... {len(jobs) - 20} more in {result.report_jobs_csv}")
    print(f"\nPer-file report: {result.report_files_csv}")
    print(f"                 {result.report_files_parquet}")
    print(f"Per-job report:  {result.report_jobs_csv}")


def read_table(uri: str) -> pd.DataFrame:
    fs, path = filesystem_for(uri)
    with fs.open(path, "rb") as handle:
        return pd.read_parquet(handle)
