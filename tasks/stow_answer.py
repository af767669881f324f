"""What a STOW-RS request did with each file of its batch, in the shape the
rest of the pipeline reads an import job's output in.

An import job's output names files by staged key; a STOW-RS request's files
are never staged, so its answer names them by their source URI, and each
file read into a request body gets a :class:`StagedFile` whose key is that
URI (with the SHA-256 of the bytes sent). The report, verification and the
ledger then take a request's files as they take a job's.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tasks.manifest import FAILURE_COLUMNS, SUCCESS_COLUMNS, WARNING_COLUMNS, JobOutput
from tasks.stage import StagedFile


@dataclass(frozen=True)
class Stored:
    """A file whose instance the data store holds from this request (or an
    earlier attempt of it)."""

    uri: str
    image_set_id: str | None
    is_primary: bool | None
    version: int | None
    # As the report's warning_codes spells them; None when not warned.
    warnings: str | None = None


@dataclass(frozen=True)
class Refused:
    """A file the request could not store: HealthImaging's FailureReason, or
    the request's own end (retries spent)."""

    uri: str
    error_type: str
    message: str


@dataclass(frozen=True)
class StowAnswer:
    # Each file as read into a request body, or why it could not be.
    sent: tuple[StagedFile, ...]
    stored: tuple[Stored, ...]
    refused: tuple[Refused, ...]
    # What the requests cost: how many were sent, with how many bytes.
    requests: int = 0

    def as_job_output(self) -> JobOutput:
        """The answer as an import job's output (``inputFile`` is the source
        URI): success and warning rows for what was stored, failure rows for
        what was refused."""
        plain = [s for s in self.stored if not s.warnings]
        warned = [s for s in self.stored if s.warnings]
        success = _stored_rows(plain, SUCCESS_COLUMNS)
        warning = _stored_rows(warned, WARNING_COLUMNS)
        warning["warningCodes"] = [s.warnings for s in warned]
        warning["warningMessages"] = [""] * len(warned)
        failure = pd.DataFrame([(r.uri, r.error_type, r.message) for r in self.refused],
                               columns=FAILURE_COLUMNS)
        summary = {"numberOfScannedFiles": len(self.stored) + len(self.refused),
                   "numberOfImportedFiles": len(self.stored),
                   "numberOfGeneratedImageSets": len({s.image_set_id for s in self.stored
                                                      if s.image_set_id}),
                   "requests": self.requests}
        return JobOutput(summary=summary, success=success, failure=failure, warning=warning)


def _stored_rows(stored: list[Stored], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame([(s.uri, s.image_set_id, s.is_primary, s.version) for s in stored],
                         columns=SUCCESS_COLUMNS).reindex(columns=columns)
    frame["isPrimary"] = frame["isPrimary"].astype("boolean")
    frame["imageSetVersion"] = frame["imageSetVersion"].astype("Int64")
    return frame
