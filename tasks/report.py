"""The report: one row per input file saying what happened to it, plus one row per job.

Every discovered file gets exactly one final status, whichever stage stopped
it. HealthImaging reports files by staged S3 key, so manifest rows are mapped
back to the source through the staging results. Patient identifiers appear only
when the operator opts in (``include_phi``). The row's columns are declared
in :mod:`tasks.report_row`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, cast

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.batch import Batch
from tasks.discover import SourceFile
from tasks.locations import filesystem_for, is_s3, uri_for
from tasks.manifest import JobOutput
from tasks.poll import JobOutcome
from tasks.report_row import FILE_COLUMNS as FILE_COLUMNS
from tasks.report_row import PHI_COLUMNS as PHI_COLUMNS
from tasks.report_row import file_rows, parquet_schema, report_columns
from tasks.stage import StagedFile
from tasks.statuses import RUNNING, FileStatus, FileValidity, JobStatus, Landing, StageAction
from tasks.validate import ValidationRecord
from tasks.viewer_paths import viewer_paths

# The pipeline, not the file's content, let these down (or has not finished
# with them): a run that leaves any is not done.
FAILURES = frozenset({
    FileStatus.IMPORT_FAILED, FileStatus.JOB_FAILED, FileStatus.TIMED_OUT,
    FileStatus.SUBMITTED, FileStatus.INTERRUPTED, FileStatus.GIVEN_UP, FileStatus.OUTPUT_MISSING,
    FileStatus.VERIFY_MISMATCH,
})

FILES_DATASET = "files"
# Rows up to which the per-file report is also one CSV (a spreadsheet's limit
# is 1,048,576 rows).
CSV_ROW_LIMIT = 1_000_000
# The error_message of a file reported imported because the data store holds
# it, its job's output being unreadable (followed by why).
CONFIRMED_IN_DATASTORE = "Confirmed in the data store (the job output could not be read: "


def confirmed_after(job_status: str, message: str | None) -> str:
    """The error_message of a file reported imported because the data store
    holds it, its job having ended FAILED or not been waited for."""
    return f"Confirmed in the data store (its job ended {job_status}: {message or 'no message'})"


JOB_COLUMNS = [
    "batch_id", "job_id", "landing", "job_status", "message", "files", "bytes", "input_s3_uri",
    "output_s3_uri", "scanned_files", "imported_files", "generated_image_sets",
    *[s.value for s in FileStatus],
]


@dataclass(frozen=True)
class ReportPaths:
    # A parquet dataset: one part per window (pandas and pyarrow read the folder).
    files_parquet: str
    # One CSV of every file, for runs small enough to open in a spreadsheet.
    files_csv: str | None
    jobs_parquet: str
    jobs_csv: str
    summary: str


def build_file_report(
    records: Sequence[ValidationRecord],
    batches: Sequence[Batch],
    staged: Sequence[StagedFile],
    outcomes: Sequence[JobOutcome],
    outputs: Mapping[str, JobOutput | str],
    include_phi: bool = False,
) -> pd.DataFrame:
    """One row per validated (i.e. discovered) file.

    ``outputs`` maps batch ID to the parsed job output, or to the reason it
    could not be read.
    """
    files = pd.DataFrame(
        {
            "source_uri": [r.uri for r in records],
            "size": pd.array([r.size for r in records], dtype="Int64"),
            "sop_instance_uid": [r.sop_instance_uid for r in records],
            "study_instance_uid": [r.study_instance_uid for r in records],
            "series_instance_uid": [r.series_instance_uid for r in records],
            "series_number": [r.series_number for r in records],
            "transfer_syntax": [r.transfer_syntax for r in records],
            "validity": [r.status.value for r in records],
            "reason_code": [r.reason_code.value if r.reason_code else None for r in records],
            "reason_message": [r.reason_message for r in records],
            "expected_warnings": [r.expected_warnings for r in records],
            # Known before staging only for a file found already imported.
            "known_sha256": [r.sha256 for r in records],
        }
    )
    if include_phi:
        for column in PHI_COLUMNS:
            files[column] = [getattr(r, column) for r in records]

    if len({o.batch_id for o in outcomes}) != len(outcomes):
        raise ValueError("more than one job outcome for a batch")
    batch_of: dict[str, str] = {}
    for b in batches:
        batch_of.update(dict.fromkeys((f.uri for f in b.files), b.batch_id))
    files["batch_id"] = [batch_of.get(r.uri) for r in records]
    stage = pd.DataFrame(
        {
            "source_uri": [s.source_uri for s in staged],
            "staged_key": [s.key for s in staged],
            "stage_action": [s.action.value for s in staged],
            "stage_error": [s.error for s in staged],
            "sha256": [s.sha256 for s in staged],
        },
        columns=["source_uri", "staged_key", "stage_action", "stage_error", "sha256"],
    )
    files = files.merge(stage, on="source_uri", how="left")
    staged_sha256 = files["sha256"].astype(object)
    files["sha256"] = staged_sha256.where(staged_sha256.notna(), files.pop("known_sha256"))
    jobs = pd.DataFrame(
        {
            "batch_id": [o.batch_id for o in outcomes],
            "job_id": [o.job_id for o in outcomes],
            "job_status": [o.status.value for o in outcomes],
            "job_message": [o.message for o in outcomes],
            "landing": [o.landing.value for o in outcomes],
        },
        columns=["batch_id", "job_id", "job_status", "job_message", "landing"],
    )
    files = files.merge(jobs, on="batch_id", how="left")
    # An empty run (everything skipped as unchanged) has float64 empty columns.
    files["staged_key"] = files["staged_key"].astype(object)
    files = files.merge(_manifest_rows(outputs), on="staged_key", how="left")
    unreadable = {b: o if isinstance(o, str) else o.lost
                  for b, o in outputs.items() if isinstance(o, str) or o.lost}
    # Mapping a million rows through an empty dict still costs 0.2 s.
    files["output_error"] = files["batch_id"].map(unreadable) if unreadable else None
    return _decide(files, include_phi)


def _manifest_rows(outputs: Mapping[str, JobOutput | str]) -> pd.DataFrame:
    """All manifest rows keyed by staged key; failure beats warning beats
    success when one file is listed more than once."""
    frames = []
    for output in outputs.values():
        if isinstance(output, str):
            continue
        frames.append(output.failure.assign(outcome="failure"))
        frames.append(output.warning.assign(outcome="warning"))
        frames.append(output.success.assign(outcome="success"))
    columns = ["staged_key", "outcome", "imageSetId", "isPrimary", "imageSetVersion",
               "exceptionType", "message", "warningCodes"]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=columns)
    rows = pd.concat(frames, ignore_index=True).rename(columns={"inputFile": "staged_key"})
    rows = rows.drop_duplicates("staged_key", keep="first")
    return rows.reindex(columns=columns)


def _decide(files: pd.DataFrame, include_phi: bool) -> pd.DataFrame:
    """First matching rule wins, in pipeline order: a file stopped by
    validation never reaches the job rules."""
    validity, job, outcome = files["validity"], files["job_status"], files["outcome"]
    completed = job == JobStatus.COMPLETED.value
    lost = files["output_error"].notna()
    confirmed = (CONFIRMED_IN_DATASTORE + files["output_error"].fillna("") + ")"
                 if lost.any() else None)
    Text = pd.Series | str | None
    rules: list[tuple[pd.Series, FileStatus, Text, Text]] = [
        (validity == FileValidity.INVALID.value, FileStatus.INVALID, None,
         files["reason_message"]),
        (validity == FileValidity.DUPLICATE.value, FileStatus.DUPLICATE, None,
         files["reason_message"]),
        (validity == FileValidity.ALREADY_IMPORTED.value, FileStatus.ALREADY_IMPORTED, None,
         files["reason_message"]),
        (files["batch_id"].isna(), FileStatus.IMPORT_FAILED, "NotBatched",
         "The file was valid but was not put in any batch."),
        (files["stage_action"] == StageAction.FAILED.value, FileStatus.IMPORT_FAILED,
         "StagingError", files["stage_error"]),
        (job.isin([s.value for s in RUNNING]) & files["job_id"].notna(), FileStatus.SUBMITTED,
         None, files["job_message"]),
        ((job == JobStatus.INTERRUPTED.value) | (files["stage_action"]
                                                 == StageAction.INTERRUPTED.value),
         FileStatus.INTERRUPTED, None, "The run was stopped before this file's job started."),
        (job.isna(), FileStatus.VALIDATED, None, None),
        (job == JobStatus.NOT_STARTED.value, FileStatus.JOB_FAILED, "JobNotStarted",
         files["job_message"]),
        (job == JobStatus.FAILED.value, FileStatus.JOB_FAILED, "JobFailed",
         files["job_message"]),
        (job == JobStatus.TIMED_OUT.value, FileStatus.TIMED_OUT, "JobTimedOut",
         files["job_message"]),
        (completed & (outcome == "failure"), FileStatus.IMPORT_FAILED,
         files["exceptionType"], files["message"]),
        (completed & (outcome == "warning"), FileStatus.IMPORTED_WITH_WARNINGS, None, None),
        (completed & (outcome == "success") & lost, FileStatus.IMPORTED, None, confirmed),
        (completed & (outcome == "success"), FileStatus.IMPORTED, None, None),
        (completed & lost, FileStatus.OUTPUT_MISSING, "ManifestError", files["output_error"]),
        (completed, FileStatus.IMPORT_FAILED, "MissingFromOutput",
         "The job COMPLETED but this file is missing from its output: it is in "
         "neither SUCCESS nor FAILURE."),
    ]
    status = pd.Series(None, index=files.index, dtype=object)
    error_type = pd.Series(None, index=files.index, dtype=object)
    message = pd.Series(None, index=files.index, dtype=object)
    for condition, file_status, kind, text in rules:
        mask = condition.fillna(False).astype(bool) & status.isna()
        status[mask] = file_status.value
        error_type[mask] = kind[mask] if isinstance(kind, pd.Series) else kind
        message[mask] = text[mask] if isinstance(text, pd.Series) else text
    imported = status.isin([FileStatus.IMPORTED.value, FileStatus.IMPORTED_WITH_WARNINGS.value])
    report = files.assign(
        status=status,
        # A STOW-RS request's files are keyed by their source URI: never staged.
        staged_key=files["staged_key"].where(files["landing"] != Landing.STOW.value),
        # Object, never float: a report without one imported file has no
        # value here, and its columns must keep their types (rebuilt reports too).
        image_set_id=files["imageSetId"].where(imported).astype(object),
        is_primary=files["isPrimary"].where(imported).astype("boolean"),
        image_set_version=files["imageSetVersion"].where(imported).astype("Int64"),
        error_type=error_type.where(error_type.notna(), None),
        error_message=message.where(message.notna(), None),
        warning_codes=files["warningCodes"].where(
            status == FileStatus.IMPORTED_WITH_WARNINGS.value
        ).astype(object),
    )
    report = report.assign(viewer_path=viewer_paths(report))
    return report.reindex(columns=report_columns(include_phi))


def build_job_summary(
    batches: Sequence[Batch],
    outcomes: Sequence[JobOutcome],
    outputs: Mapping[str, JobOutput | str],
    file_report: pd.DataFrame,
) -> pd.DataFrame:
    """One row per batch: the job, its end state and its files by final status."""
    by_batch = {o.batch_id: o for o in outcomes}
    rows = []
    for batch in batches:
        outcome = by_batch.get(batch.batch_id)
        output = outputs.get(batch.batch_id)
        summary = output.summary if isinstance(output, JobOutput) else {}
        message = outcome.message if outcome else None
        if isinstance(output, str):
            message = output
        elif output is not None and output.lost:
            message = output.lost
        row = {
            "batch_id": batch.batch_id,
            "job_id": outcome.job_id if outcome else None,
            "landing": outcome.landing.value if outcome else None,
            "job_status": outcome.status.value if outcome else None,
            "message": message,
            "files": len(batch.files),
            "bytes": batch.total_bytes,
            "input_s3_uri": outcome.input_s3_uri if outcome else None,
            "output_s3_uri": outcome.output_s3_uri if outcome else None,
            "scanned_files": summary.get("numberOfScannedFiles"),
            "imported_files": summary.get("numberOfImportedFiles"),
            "generated_image_sets": summary.get("numberOfGeneratedImageSets"),
        }
        rows.append(row)
    return _with_status_counts(pd.DataFrame(rows, columns=JOB_COLUMNS), file_report)


def _with_status_counts(jobs: pd.DataFrame, file_report: pd.DataFrame) -> pd.DataFrame:
    """The job rows with their files counted by final status, one column each."""
    counts = (
        file_report.dropna(subset=["batch_id"])
        .groupby(["batch_id", "status"]).size().unstack(fill_value=0)
    )
    counted = counts.reindex(index=jobs["batch_id"], columns=[s.value for s in FileStatus],
                             fill_value=0).astype("int64")
    jobs = jobs.assign(**{s.value: counted[s.value].to_numpy() for s in FileStatus})
    for column in ("scanned_files", "imported_files", "generated_image_sets"):
        jobs[column] = jobs[column].astype("Int64")
    return jobs.reindex(columns=JOB_COLUMNS)


def rebuilt_report(files: pd.DataFrame, jobs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run's report from the rows its ledger recorded (``tasks.ledger.recorded_run``):
    the columns and types of the report it wrote, without PHI columns (PHI is
    never in the ledger), and job rows counted again from the files."""
    files = file_rows(files)
    jobs = jobs.astype(object).where(jobs.notna(), None).astype(
        {"files": "int64", "bytes": "int64"})
    return files, _with_status_counts(jobs, files)


def write_report(files: pd.DataFrame, jobs: pd.DataFrame, folder: str,
                 summary: Mapping[str, object] | None = None) -> ReportPaths:
    """A whole report at once (a retry, a report rebuilt from the ledger)."""
    writer = ReportWriter(folder)
    writer.add_files(files)
    return writer.close(jobs, summary or {"counts": writer.counts})


class ReportWriter:
    """Writes a run's report window by window, holding no more than one window.

    Parquet for tools, CSV for people; local folder or s3:// alike. The
    per-file parquet is a dataset, one part per window. The per-file CSV is
    kept only while the run stays under ``csv_rows`` rows (a spreadsheet
    opens about a million), streamed into a local temporary file meanwhile.

    Each file appears whole or not at all: a run killed while writing must
    never leave a truncated part (see :func:`_publish`); readers skip the
    hidden temporary names.
    """

    def __init__(self, folder: str, csv_rows: int = CSV_ROW_LIMIT) -> None:
        self.folder = folder.rstrip("/")
        self.fs, self.root = filesystem_for(self.folder)
        self.local = not is_s3(self.folder)
        self.csv_rows = csv_rows
        self.rows = 0
        self.parts = 0
        self.counts = dict.fromkeys((s.value for s in FileStatus), 0)
        # Closed (and so deleted) by close(), or once the run outgrows a CSV.
        self._csv: IO[bytes] | None = tempfile.TemporaryFile()  # noqa: SIM115
        self._schema: pa.Schema | None = None
        self.fs.makedirs(f"{self.root}/{FILES_DATASET}", exist_ok=True)

    def add_files(self, files: pd.DataFrame) -> None:
        """One window's rows: a parquet part, the CSV so far, the counts."""
        table = pa.Table.from_pandas(files, schema=self._schema_for(files),
                                     preserve_index=False)
        path = f"{self.root}/{FILES_DATASET}/part-{self.parts:05d}.parquet"
        _publish(self.fs, path, lambda out: pq.write_table(table, out), self.local)
        self.parts += 1
        self.rows += len(files)
        for status, count in status_counts(files).items():
            self.counts[status] += count
        if self._csv is not None and self.rows > self.csv_rows:
            self._csv.close()
            self._csv = None
        if self._csv is not None:
            files.to_csv(self._csv, index=False, header=self.parts == 1)

    def close(self, jobs: pd.DataFrame, summary: Mapping[str, object]) -> ReportPaths:
        """The job table, the summary, and the CSV if the run stayed small."""
        if self.parts == 0:
            self.add_files(file_rows(pd.DataFrame()))
        files_csv = None
        if self._csv is not None:
            kept = self._csv
            kept.seek(0)
            files_csv = self._put("files.csv", lambda out: shutil.copyfileobj(kept, out))
            kept.close()
        text = json.dumps({"files": self.rows, **summary}, indent=2, sort_keys=True,
                          default=str)
        return ReportPaths(
            files_parquet=uri_for(self.folder, f"{self.root}/{FILES_DATASET}"),
            files_csv=files_csv,
            jobs_parquet=self._put("jobs.parquet", lambda out: _serialize(jobs, "parquet", out)),
            jobs_csv=self._put("jobs.csv", lambda out: _serialize(jobs, "csv", out)),
            summary=self._put("summary.json", lambda out: out.write(text.encode())),
        )

    def _put(self, name: str, write: Callable[[IO[bytes]], object]) -> str:
        path = f"{self.root}/{name}"
        _publish(self.fs, path, write, self.local)
        return uri_for(self.folder, path)

    def _schema_for(self, files: pd.DataFrame) -> pa.Schema:
        """One schema for every part, whatever a window's columns happen to
        hold (all empty, for instance): the parts must read as one dataset."""
        if self._schema is None:
            self._schema = parquet_schema(list(files.columns))
        return self._schema


def write_table(frame: pd.DataFrame, folder: str, name: str) -> dict[str, str]:
    """``name.parquet`` and ``name.csv`` in ``folder``, each whole or not at
    all; returns their URIs by extension."""
    fs, root = filesystem_for(folder)
    fs.makedirs(root, exist_ok=True)
    uris = {}
    for extension in ("parquet", "csv"):
        path = f"{root}/{name}.{extension}"
        _publish(fs, path, partial(_serialize, frame, extension), local=not is_s3(folder))
        uris[extension] = uri_for(folder, path)
    return uris


def _serialize(frame: pd.DataFrame, extension: str, out: IO[bytes]) -> None:
    if extension == "parquet":
        frame.to_parquet(out, index=False)
    else:
        frame.to_csv(out, index=False)


def _publish(
    fs: fsspec.AbstractFileSystem, path: str, write: Callable[[IO[bytes]], object], local: bool
) -> None:
    """Write under a temporary name, then move into place in one step.

    Locally: a hidden temporary file in the same folder (same filesystem),
    then ``os.replace``, atomic on POSIX and Windows. On S3 there is no
    rename, but an object appears only once its PutObject (or multipart
    upload) completes; what must be avoided is s3fs's ``open("wb")``, whose
    ``close()`` uploads whatever was buffered even when the block raised.
    So the file is serialized to a local temporary file first and uploaded
    in one ``put_file`` (a single PutObject below 100 MB).
    """
    if local:
        folder, name = os.path.split(path)
        # Not mkstemp: its 0600 mode would make the report unreadable to others.
        temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temporary, "xb") as out:
                write(out)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return
    with tempfile.NamedTemporaryFile(suffix=os.path.splitext(path)[1]) as out:
        write(out)
        out.flush()
        fs.put_file(out.name, path)


def status_counts(files: pd.DataFrame) -> dict[str, int]:
    counts = files["status"].value_counts()
    return {s.value: int(counts.get(s.value, 0)) for s in FileStatus}


@task(name="report", cache_policy=NO_CACHE)
def build_report(
    records: list[ValidationRecord],
    batches: list[Batch],
    staged: list[StagedFile],
    outcomes: list[JobOutcome],
    outputs: dict[str, JobOutput | str],
    include_phi: bool = False,
) -> pd.DataFrame:
    """One window's per-file rows, from what the stages handed over; the flow
    records them in the ledger and writes them (a :class:`ReportWriter`)."""
    return build_file_report(records, batches, staged, outcomes, outputs, include_phi)


def not_taken_rows(files: Sequence[SourceFile]) -> pd.DataFrame:
    """Report rows of files a stopped run never took from its listing."""
    return file_rows(pd.DataFrame({
        "source_uri": [f.uri for f in files],
        "size": pd.array([f.size for f in files], dtype="Int64"),
        "status": FileStatus.INTERRUPTED.value,
        "error_message": "The run was stopped before this file was read.",
    }))


def job_rows(jobs: pd.DataFrame) -> list[dict[str, object]]:
    """The job table as plain rows (for an artifact): NaN and NA become None."""
    # pandas types records as dict[Hashable, Any]; the job table's labels are all str.
    return cast(list[dict[str, object]],
                jobs.astype(object).where(jobs.notna(), None).to_dict("records"))
