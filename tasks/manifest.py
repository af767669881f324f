"""Job output: what HealthImaging did with each file of a COMPLETED job.

COMPLETED does not mean every file was imported; the per-file truth is only in
the job's output folder (docs/healthimaging.md). A job of 5,000
files writes 5,000 success lines and a large backfill reads millions, so the
ndjson files are parsed by Arrow's multithreaded JSON reader with a fixed
schema rather than line by line in Python.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.json as pajson
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.locations import filesystem_for
from tasks.poll import JobOutcome
from tasks.statuses import JobStatus

# Arrow parses on its own thread pool, and mimalloc, pyarrow's default pool,
# keeps memory per thread: reading two 5,000-line outputs at once added 42 MB
# of RSS where Arrow never held 2 MB, against 13 MB on the system allocator
# (bench.end_to_end, peak RSS: 385 -> 370 MB at 10,000 files, 299 -> 293 at
# 1,000). The pool is the process's (pandas' strings use it too), so an
# operator's ARROW_DEFAULT_MEMORY_POOL wins.
if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    pa.set_memory_pool(pa.system_memory_pool())

MANIFEST_NAME = "job-output-manifest.json"
SUCCESS_PATH = "SUCCESS/success.ndjson"
FAILURE_PATH = "FAILURE/failure.ndjson"
WARNING_PATH = "WARNING/warning.ndjson"

_SUMMARY_KEYS = (
    "jobId", "datastoreId", "inputS3Uri", "outputS3Uri", "successOutputS3Uri",
    "failureOutputS3Uri", "warningsOutputS3Uri", "numberOfScannedFiles",
    "numberOfImportedFiles", "numberOfFilesWithCustomerError",
    "numberOfFilesWithServerError", "numberOfGeneratedImageSets", "imageSetsSummary",
)
_IMPORT_RESPONSE = pa.struct([("imageSetId", pa.string()), ("isPrimary", pa.bool_())])
_SUCCESS_SCHEMA = pa.schema([("inputFile", pa.string()), ("importResponse", _IMPORT_RESPONSE)])
_FAILURE_SCHEMA = pa.schema(
    [
        ("inputFile", pa.string()),
        ("exception", pa.struct([("exceptionType", pa.string()), ("message", pa.string())])),
    ]
)
_WARNING_SCHEMA = pa.schema(
    [
        ("inputFile", pa.string()),
        ("importResponse", _IMPORT_RESPONSE),
        (
            "warnings",
            pa.list_(
                pa.struct(
                    [
                        ("warning_reason_code", pa.int64()),
                        ("type", pa.string()),
                        ("message", pa.string()),
                    ]
                )
            ),
        ),
    ]
)
SUCCESS_COLUMNS = ["inputFile", "imageSetId", "isPrimary", "imageSetVersion"]
FAILURE_COLUMNS = ["inputFile", "exceptionType", "message"]
WARNING_COLUMNS = [*SUCCESS_COLUMNS, "warningCodes", "warningMessages"]


class ManifestError(Exception):
    """The job output folder is missing or not in the documented shape."""


@dataclass(frozen=True)
class JobOutput:
    summary: dict[str, Any]
    success: pd.DataFrame
    failure: pd.DataFrame
    warning: pd.DataFrame
    # Set when the job's own output could not be read (why) and these rows
    # were found in the data store instead (tasks.landed): the files absent
    # from them are not known to have failed, only not found.
    lost: str | None = None

    @classmethod
    def empty(cls) -> JobOutput:
        return cls({}, pd.DataFrame(columns=SUCCESS_COLUMNS),
                   pd.DataFrame(columns=FAILURE_COLUMNS), pd.DataFrame(columns=WARNING_COLUMNS))


def read_job_output(output_s3_uri: str, fs: fsspec.AbstractFileSystem | None = None) -> JobOutput:
    """Read a job's own output folder (``jobProperties.outputS3Uri``).

    An absent ndjson file means no file in that category; an absent or
    malformed manifest is an error, because the counts cannot be trusted.
    """
    default_fs, folder = filesystem_for(output_s3_uri)
    fs = fs or default_fs
    folder = folder.rstrip("/")
    summary = _read_summary(fs, f"{folder}/{MANIFEST_NAME}")
    versions = pd.DataFrame(
        [
            (s["imageSetId"], int(s["imageSetVersion"]))
            for s in summary["imageSetsSummary"]
        ],
        columns=["imageSetId", "imageSetVersion"],
    )
    success = _with_versions(
        _flatten_import_response(_read_ndjson(fs, f"{folder}/{SUCCESS_PATH}", _SUCCESS_SCHEMA)),
        versions,
    )
    failure_table = _read_ndjson(fs, f"{folder}/{FAILURE_PATH}", _FAILURE_SCHEMA)
    exception = failure_table.column("exception").combine_chunks()
    failure = pd.DataFrame(
        {
            "inputFile": failure_table.column("inputFile").to_pandas(),
            "exceptionType": exception.field("exceptionType").to_pandas(),
            "message": exception.field("message").to_pandas(),
        },
        columns=FAILURE_COLUMNS,
    )
    warning_table = _read_ndjson(fs, f"{folder}/{WARNING_PATH}", _WARNING_SCHEMA)
    warning = _with_versions(_flatten_import_response(warning_table), versions)
    codes, messages = _format_warnings(warning_table.column("warnings").to_pylist())
    warning["warningCodes"] = codes
    warning["warningMessages"] = messages
    return JobOutput(summary=summary, success=success, failure=failure, warning=warning)


def _read_summary(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any]:
    try:
        document = orjson.loads(fs.cat_file(path))
    except FileNotFoundError as exc:
        raise ManifestError(f"The job output has no {MANIFEST_NAME} at {path}.") from exc
    except orjson.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}.") from exc
    summary = document.get("jobSummary") if isinstance(document, dict) else None
    if not isinstance(summary, dict):
        raise ManifestError(f"{path} has no jobSummary object.")
    missing = [key for key in _SUMMARY_KEYS if key not in summary]
    if missing:
        raise ManifestError(f"{path} lacks {', '.join(missing)} in jobSummary.")
    return summary


def _read_ndjson(fs: fsspec.AbstractFileSystem, path: str, schema: pa.Schema) -> pa.Table:
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        return schema.empty_table()
    if not data.strip():
        return schema.empty_table()
    try:
        return pajson.read_json(
            pa.BufferReader(data),
            parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    except pa.ArrowInvalid as exc:
        raise ManifestError(f"{path} is not valid ndjson: {exc}") from exc


def _flatten_import_response(table: pa.Table) -> pd.DataFrame:
    response = table.column("importResponse").combine_chunks()
    return pd.DataFrame(
        {
            "inputFile": table.column("inputFile").to_pandas(),
            "imageSetId": response.field("imageSetId").to_pandas(),
            "isPrimary": response.field("isPrimary").to_pandas(),
        }
    )


def _with_versions(frame: pd.DataFrame, versions: pd.DataFrame) -> pd.DataFrame:
    merged = frame.merge(versions, on="imageSetId", how="left")
    merged["imageSetVersion"] = merged["imageSetVersion"].astype("Int64")
    return merged


def _format_warnings(rows: list[list[dict[str, Any]] | None]) -> tuple[list[str], list[str]]:
    codes, messages = [], []
    for warnings in rows:
        warnings = warnings or []
        codes.append(";".join(_warning_code(w) for w in warnings))
        messages.append(";".join(w.get("message") or "" for w in warnings))
    return codes, messages


def _warning_code(warning: dict[str, Any]) -> str:
    number = warning.get("warning_reason_code")
    kind = warning.get("type") or "OTHER"
    return f"{kind}(0x{number:04X})" if number is not None else kind


def read_outputs(outcomes: list[JobOutcome]) -> dict[str, JobOutput | str]:
    """Output of every COMPLETED job by batch ID; an unreadable output becomes
    its error message so one bad folder does not hide the others' results."""
    completed = [o for o in outcomes if o.status is JobStatus.COMPLETED]

    def read(outcome: JobOutcome) -> JobOutput | str:
        if outcome.answer is not None:  # a STOW-RS request: its answer is its output
            return outcome.answer.as_job_output()
        if not outcome.output_s3_uri:
            return "GetDICOMImportJob returned no outputS3Uri for a COMPLETED job."
        try:
            return read_job_output(outcome.output_s3_uri)
        except (ManifestError, OSError) as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip((o.batch_id for o in completed), pool.map(read, completed),
                        strict=True))


@task(name="read-job-outputs", cache_policy=NO_CACHE)
def job_outputs(outcomes: list[JobOutcome]) -> dict[str, JobOutput | str]:
    return read_outputs(outcomes)
