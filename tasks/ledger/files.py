"""A file as the ledger knows it, shared by the parts that read files back
(jobs to resume, failures to retry)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tasks.discover import SourceFile
from tasks.statuses import FileStatus, FileValidity
from tasks.validate import ValidationRecord

# Outcomes an unreadable job output never overwrites: the output that said so
# is gone, not wrong (the file stays imported, its outcome in doubt).
IMPORTED = frozenset({FileStatus.IMPORTED.value, FileStatus.IMPORTED_WITH_WARNINGS.value})


@dataclass(frozen=True)
class LedgerFile:
    """A file as the ledger knows it."""

    uri: str
    source: str
    relative_path: str
    size: int | None
    version: str | None
    sha256: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    status: str | None
    error_type: str | None
    reason: str | None
    job_id: str | None
    attempts: int
    batch_id: str | None = None
    # The image set its latest outcome names (moved by a reconciliation).
    image_set_id: str | None = None

    def as_source_file(self) -> SourceFile:
        return SourceFile(self.uri, self.size or 0, self.version or "", self.relative_path)

    def as_validation_record(self) -> ValidationRecord:
        """The record that was submitted in its job, to report on that job's output."""
        return ValidationRecord(
            uri=self.uri, relative_path=self.relative_path, size=self.size or 0,
            status=FileValidity.VALID, sop_instance_uid=self.sop_instance_uid,
            study_instance_uid=self.study_instance_uid,
            series_instance_uid=self.series_instance_uid, sha256=self.sha256,
        )


def ledger_file(row: sa.Row[*tuple[Any, ...]]) -> LedgerFile:
    """A files_table row as a LedgerFile (SQLAlchemy Core types a table's
    columns, so a row's fields, as Any: the types are checked here, once)."""
    return LedgerFile(
        uri=row.uri, source=row.source, relative_path=row.relative_path, size=row.size,
        version=row.version, sha256=row.sha256, sop_instance_uid=row.sop_instance_uid,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid, status=row.status,
        error_type=row.error_type, reason=row.reason, job_id=row.job_id,
        attempts=int(row.attempts or 0), batch_id=row.batch_id, image_set_id=row.image_set_id,
    )
