"""Writes a HealthImaging job output folder (docs §3.1) for tests of the readers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

DS = "0123456789abcdef0123456789abcdef"


def write_job_output(
    folder: Path,
    success: Sequence[dict[str, Any]] = (),
    failure: Sequence[dict[str, Any]] = (),
    warning: Sequence[dict[str, Any]] = (),
    image_sets: Sequence[dict[str, Any]] = (),
    write_empty: bool = False,
) -> Path:
    """Empty categories are left out unless ``write_empty``, as the service may do."""
    folder.mkdir(parents=True, exist_ok=True)
    uri = str(folder)
    summary = {
        "jobId": "job1", "datastoreId": DS, "inputS3Uri": "s3://in/prefix/",
        "outputS3Uri": uri, "successOutputS3Uri": f"{uri}/SUCCESS/",
        "failureOutputS3Uri": f"{uri}/FAILURE/", "warningsOutputS3Uri": f"{uri}/WARNING/",
        "numberOfScannedFiles": len(success) + len(failure),
        "numberOfImportedFiles": len(success),
        "numberOfFilesWithCustomerError": len(failure),
        "numberOfFilesWithServerError": 0,
        "numberOfGeneratedImageSets": len(image_sets),
        "imageSetsSummary": list(image_sets),
    }
    (folder / "job-output-manifest.json").write_bytes(orjson.dumps({"jobSummary": summary}))
    for name, rows in (("SUCCESS/success", success), ("FAILURE/failure", failure),
                       ("WARNING/warning", warning)):
        if rows or write_empty:
            path = folder / f"{name}.ndjson"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return folder


def success_row(key: str, image_set: str, primary: bool = True) -> dict[str, Any]:
    return {"inputFile": key, "importResponse": {"imageSetId": image_set, "isPrimary": primary}}


def failure_row(key: str, kind: str, message: str) -> dict[str, Any]:
    return {"inputFile": key, "exception": {"exceptionType": kind, "message": message}}


def warning_row(key: str, image_set: str, code: int, kind: str) -> dict[str, Any]:
    return {**success_row(key, image_set),
            "warnings": [{"warning_reason_code": code, "type": kind, "message": "m"}]}


def image_set(image_set_id: str, version: int = 1, primary: bool = True) -> dict[str, Any]:
    return {"imageSetId": image_set_id, "imageSetVersion": version, "isPrimary": primary,
            "numberOfMatchedSOPInstances": 1}
