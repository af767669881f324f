"""The job's output folder, laid out exactly as AWS writes it (behaviour doc
§3.1), because real clients parse it strictly: the manifest always carries
every key, and the three ndjson files are always written, empty when there is
nothing to say."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from emulator.state.records import ImportJob
from emulator.worker.grouping import ImageSetSummary, Placement
from emulator.worker.import_warnings import ImportWarning
from import_rules.codes import FailureReason

CUSTOMER_ERROR = "ValidationException"
SERVER_ERROR = "InternalServerException"


class OutputNotWritable(Exception):
    """The output location cannot be written; the job fails with this message."""


@dataclass
class FileOutcome:
    """What happened to one input file: ``exception_type`` set means it
    failed (``reason`` says why as a STOW-RS answer does), else it was
    stored at ``placement``. The UIDs are those of the instance when the file
    could be read that far (a STOW-RS answer names instances by them)."""

    input_file: str
    exception_type: str | None = None
    message: str | None = None
    warnings: list[ImportWarning] = field(default_factory=list)
    reason: FailureReason | None = None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    placement: Placement | None = None


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


def _ndjson(lines: list[str]) -> bytes:
    return "".join(lines).encode()


def write_job_output(
    s3: Any,
    job: ImportJob,
    outcomes: list[FileOutcome],
    summaries: list[ImageSetSummary],
) -> None:
    """Write the manifest and the SUCCESS, FAILURE and WARNING files."""
    output_uri = job.output_s3_uri
    success, failure, warning = [], [], []
    for outcome in outcomes:
        if outcome.exception_type is not None:
            failure.append(
                _line(
                    {
                        "inputFile": outcome.input_file,
                        "exception": {
                            "exceptionType": outcome.exception_type,
                            "message": outcome.message,
                        },
                    }
                )
            )
            continue
        placement = outcome.placement
        assert placement is not None  # every file that did not fail was placed
        response = {"imageSetId": placement.image_set_id, "isPrimary": placement.is_primary}
        success.append(_line({"inputFile": outcome.input_file, "importResponse": response}))
        if outcome.warnings:
            warning.append(
                _line(
                    {
                        "inputFile": outcome.input_file,
                        "importResponse": response,
                        "warnings": [w.as_json() for w in outcome.warnings],
                    }
                )
            )
    failed = [o for o in outcomes if o.exception_type is not None]
    manifest = {
        "jobSummary": {
            "jobId": job.job_id,
            "datastoreId": job.datastore_id,
            "inputS3Uri": job.input_s3_uri,
            "outputS3Uri": output_uri,
            "successOutputS3Uri": f"{output_uri}SUCCESS/",
            "failureOutputS3Uri": f"{output_uri}FAILURE/",
            "warningsOutputS3Uri": f"{output_uri}WARNING/",
            "numberOfScannedFiles": len(outcomes),
            "numberOfImportedFiles": len(outcomes) - len(failed),
            "numberOfFilesWithCustomerError": sum(
                o.exception_type == CUSTOMER_ERROR for o in failed
            ),
            "numberOfFilesWithServerError": sum(o.exception_type == SERVER_ERROR for o in failed),
            "numberOfGeneratedImageSets": len(summaries),
            "imageSetsSummary": [s.as_json() for s in summaries],
        }
    }
    files = {
        "SUCCESS/success.ndjson": _ndjson(success),
        "FAILURE/failure.ndjson": _ndjson(failure),
        "WARNING/warning.ndjson": _ndjson(warning),
        "job-output-manifest.json": json.dumps(manifest, indent=2).encode(),
    }
    bucket, prefix = output_uri.removeprefix("s3://").split("/", 1)
    for name, body in files.items():
        try:
            s3.put_object(Bucket=bucket, Key=f"{prefix}{name}", Body=body)
        except (ClientError, BotoCoreError) as error:
            raise OutputNotWritable(f"Unable to write {output_uri}{name}: {error}") from error


def check_output_writable(s3: Any, output_uri: str) -> None:
    """Fail before importing anything when the output bucket is unusable,
    rather than after the image sets exist."""
    bucket = output_uri.removeprefix("s3://").split("/", 1)[0]
    try:
        s3.head_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError) as error:
        raise OutputNotWritable(
            f"Unable to write the output to {output_uri}: bucket {bucket} is not accessible "
            f"({error})"
        ) from error
