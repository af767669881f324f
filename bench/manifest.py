"""Manifest parsing: rows/s turning a job's output folder (1,000,000 lines of
success.ndjson, 100,000 of failure.ndjson) into the DataFrames the report is
joined from, with ``tasks.manifest.read_job_output``, against the obvious
baseline: ``json.loads`` per line into a DataFrame, versions joined the same way.
Then the same parse followed by the report's join of those rows onto one row
per file (``tasks.report.build_file_report``, from 1,100,000 validated,
batched and staged files whose staged keys are the lines' ``inputFile``).

    .venv/bin/python -m bench.manifest [--success 1000000] [--failure 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from bench.common import median, print_table
from tasks.batch import Batch
from tasks.manifest import read_job_output
from tasks.poll import JobOutcome
from tasks.report import build_file_report
from tasks.stage import StagedFile
from tasks.statuses import FileValidity, JobStatus, StageAction
from tasks.validate import ValidationRecord

DATASTORE = "0123456789abcdef0123456789abcdef"
IMAGE_SETS = 1000


def _success_key(i: int) -> str:
    return f"staging/run/batch/study/series/file_{i:07d}.dcm"


def _failure_key(i: int) -> str:
    return f"staging/run/batch/bad/file_{i:07d}.dcm"


def write_output(folder: Path, success: int, failure: int) -> Path:
    image_sets = [f"{i:032x}" for i in range(IMAGE_SETS)]
    (folder / "SUCCESS").mkdir(parents=True)
    (folder / "FAILURE").mkdir()
    (folder / "WARNING").mkdir()
    _write_json_lines(folder / "SUCCESS" / "success.ndjson", (
        {"inputFile": _success_key(i),
         "importResponse": {"imageSetId": image_sets[i % IMAGE_SETS], "isPrimary": True}}
        for i in range(success)
    ))
    _write_json_lines(folder / "FAILURE" / "failure.ndjson", (
        {"inputFile": _failure_key(i),
         "exception": {"exceptionType": "ValidationException",
                       "message": "DICOM attribute TransferSyntaxUID does not exist"}}
        for i in range(failure)
    ))
    (folder / "WARNING" / "warning.ndjson").write_text("")
    summary = {
        "jobId": "bench",
        "datastoreId": DATASTORE,
        "inputS3Uri": "s3://in/prefix/",
        "outputS3Uri": str(folder),
        "successOutputS3Uri": f"{folder}/SUCCESS/",
        "failureOutputS3Uri": f"{folder}/FAILURE/",
        "warningsOutputS3Uri": f"{folder}/WARNING/",
        "numberOfScannedFiles": success + failure,
        "numberOfImportedFiles": success,
        "numberOfFilesWithCustomerError": failure,
        "numberOfFilesWithServerError": 0,
        "numberOfGeneratedImageSets": IMAGE_SETS,
        "imageSetsSummary": [
            {
                "imageSetId": s,
                "imageSetVersion": 1,
                "isPrimary": True,
                "numberOfMatchedSOPInstances": success // IMAGE_SETS,
            }
            for s in image_sets
        ],
    }
    (folder / "job-output-manifest.json").write_text(json.dumps({"jobSummary": summary}))
    return folder


def _write_json_lines(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with open(path, "w") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")


def naive(folder: Path) -> int:
    summary = json.loads((folder / "job-output-manifest.json").read_text())["jobSummary"]
    versions = pd.DataFrame(summary["imageSetsSummary"])[["imageSetId", "imageSetVersion"]]
    rows = _json_lines(folder / "SUCCESS" / "success.ndjson", lambda item: (
        item["inputFile"], item["importResponse"]["imageSetId"],
        item["importResponse"]["isPrimary"],
    ))
    success = pd.DataFrame(rows, columns=["inputFile", "imageSetId", "isPrimary"])
    success = success.merge(versions, on="imageSetId", how="left")
    failures = _json_lines(folder / "FAILURE" / "failure.ndjson", lambda item: (
        item["inputFile"], item["exception"]["exceptionType"], item["exception"]["message"],
    ))
    failure = pd.DataFrame(failures, columns=["inputFile", "exceptionType", "message"])
    return len(success) + len(failure)


def _json_lines(
    path: Path, pick: Callable[[dict[str, Any]], tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """The baseline's way: json.loads per line, the fields picked into a tuple."""
    with open(path) as lines:
        return [pick(json.loads(line)) for line in lines]


def ours(folder: Path) -> int:
    output = read_job_output(str(folder))
    return len(output.success) + len(output.failure) + len(output.warning)


def pipeline(success: int, failure: int) -> dict[str, Any]:
    """What the flow holds when the job output arrives: a record, a batch
    entry and a staged key per file, all in one completed job."""
    keys = [_success_key(i) for i in range(success)] + [_failure_key(i) for i in range(failure)]
    records = [
        ValidationRecord(uri=f"/data/{key}", relative_path=key, size=1000,
                         status=FileValidity.VALID, sha256="0" * 64,
                         sop_instance_uid=f"1.2.{i}", study_instance_uid="1.3",
                         series_instance_uid="1.4")
        for i, key in enumerate(keys)
    ]
    batch = Batch(files=tuple(records), digest="b" * 64)
    staged = [StagedFile(r.uri, batch.batch_id, key, StageAction.UPLOADED)
              for r, key in zip(records, keys, strict=True)]
    outcome = JobOutcome(batch.batch_id, DATASTORE, "bench", JobStatus.COMPLETED)
    return {"records": records, "batches": [batch], "staged": staged, "outcomes": [outcome]}


def ours_with_report(folder: Path, inputs: dict[str, Any]) -> int:
    output = read_job_output(str(folder))
    batch_id = inputs["batches"][0].batch_id
    report = build_file_report(inputs["records"], inputs["batches"], inputs["staged"],
                               inputs["outcomes"], {batch_id: output})
    counts = report["status"].value_counts().to_dict()
    if counts != {"imported": len(output.success), "import_failed": len(output.failure)}:
        raise RuntimeError(f"the report does not account for every line: {counts}")
    return len(report)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--success", type=int, default=1_000_000)
    parser.add_argument("--failure", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-manifest-") as tmp:
        folder = write_output(Path(tmp) / "output", args.success, args.failure)
        inputs = pipeline(args.success, args.failure)
        times: dict[str, list[float]] = {
            "json.loads per line (baseline)": [],
            "tasks.manifest.read_job_output": [],
            "read_job_output + join into the file report": [],
        }
        parsers: tuple[Callable[[Path], int], ...] = (
            naive, ours, lambda output_folder: ours_with_report(output_folder, inputs))
        for _ in range(args.repeats):
            for label, parse in zip(times, parsers, strict=True):
                started = time.perf_counter()
                rows = parse(folder)
                times[label].append(time.perf_counter() - started)
                if rows != args.success + args.failure:
                    raise RuntimeError(f"{label} parsed {rows} rows")
    base = median(times["json.loads per line (baseline)"])
    rows_total = args.success + args.failure
    print_table(
        f"Manifest parsing: {args.success:,} success + {args.failure:,} failure lines "
        f"(median of {args.repeats})",
        ["parser", "median s", "rows/s", "speed vs baseline"],
        [
            (label, median(t), f"{rows_total / median(t):,.0f}", base / median(t))
            for label, t in times.items()
        ],
    )


if __name__ == "__main__":
    main()
