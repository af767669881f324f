"""The per-file report row, declared once: each column's name, type, meaning,
whether it is PHI, and where the ledger keeps it.

The report writer, the ledger's outcome and history rows, the report rebuilt
from the ledger and the rows built by hand (retries, files a stopped run never
took) all take their columns from here, so that a new column is one line
below plus the code that fills it. The ledger's tables stay in
``tasks.ledger.schema`` under Alembic; tests hold them to this declaration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from tasks.viewer_paths import viewer_paths


@dataclass(frozen=True)
class ColumnType:
    """One kind of value as each place holds it: a pandas column, a parquet
    field, a ledger column (of this SQLAlchemy type or a subtype)."""

    pandas: str
    parquet: pa.DataType
    sql: type[sa.types.TypeEngine[Any]]


# Nullable throughout: any cell may be empty (a file stopped before the stage
# that fills it).
TEXT = ColumnType("object", pa.string(), sa.String)
INTEGER = ColumnType("Int64", pa.int64(), sa.Integer)
FLAG = ColumnType("boolean", pa.bool_(), sa.Boolean)


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    meaning: str
    # Patient data: only in reports the operator asked for with PHI, never in
    # the ledger.
    phi: bool = False
    # The ledger_files column that keeps it as the file's latest outcome.
    latest: str | None = None
    # The ledger_outcomes column that keeps it in the run's history, from
    # which a run's report is written again.
    history: str | None = None

    def __post_init__(self) -> None:
        if self.phi and (self.latest or self.history):
            raise ValueError(f"{self.name} is PHI: the ledger must never hold it")


FILE_ROW: tuple[Column, ...] = (
    Column("source_uri", TEXT, "The input file.", history="uri"),
    Column("size", INTEGER, "Its size in bytes.", latest="size", history="size"),
    Column("sop_instance_uid", TEXT, "SOP Instance UID, from its header.",
           latest="sop_instance_uid", history="sop_instance_uid"),
    Column("study_instance_uid", TEXT, "Study Instance UID, from its header.",
           latest="study_instance_uid", history="study_instance_uid"),
    Column("series_instance_uid", TEXT, "Series Instance UID, from its header.",
           latest="series_instance_uid", history="series_instance_uid"),
    Column("series_number", TEXT, "Series Number, from its header.",
           history="series_number"),
    Column("transfer_syntax", TEXT, "Transfer Syntax UID, from its header.",
           history="transfer_syntax"),
    Column("sha256", TEXT, "Of the bytes staged, or read to find them already imported; "
           "empty when never staged or copied within S3.",
           latest="sha256", history="sha256"),
    Column("batch_id", TEXT, "The batch it was put in.", latest="batch_id", history="batch_id"),
    Column("staged_key", TEXT, "Where it was staged for import (never, for STOW-RS).",
           history="staged_key"),
    Column("job_id", TEXT, "The import job it went in, or its STOW-RS request's ID.",
           latest="job_id", history="job_id"),
    Column("landing", TEXT, "How it was sent: job or stow (tasks.statuses.Landing).",
           history="landing"),
    Column("status", TEXT, "Its final status (tasks.statuses.FileStatus).",
           latest="status", history="status"),
    Column("image_set_id", TEXT, "The image set it landed in.",
           latest="image_set_id", history="image_set_id"),
    Column("is_primary", FLAG, "False when it landed in a non-primary image set.",
           history="is_primary"),
    Column("image_set_version", INTEGER, "That image set's version after the import.",
           history="image_set_version"),
    # Not in the ledger: derived from the study, the image set and whether it
    # is primary (tasks.viewer_paths), by file_rows for every row.
    Column("viewer_path", TEXT,
           "Where `dicom-import view` opens its image set's study: append it to the "
           "address the command prints."),
    Column("error_type", TEXT, "What kind of failure stopped it (ours or HealthImaging's).",
           latest="error_type", history="error_type"),
    Column("error_message", TEXT, "Why it was not imported, or how it was confirmed.",
           latest="reason", history="reason"),
    Column("warning_codes", TEXT, "The warnings HealthImaging attached to it.",
           history="warning_codes"),
    Column("reason_code", TEXT, "Why validation refused it (import_rules.codes.ReasonCode).",
           history="reason_code"),
    Column("expected_warnings", TEXT,
           "The warnings validation expects HealthImaging to attach (import_rules).",
           history="expected_warnings"),
    Column("verification", TEXT,
           "What verification found (tasks.statuses.Verification).",
           history="verification"),
    Column("verification_detail", TEXT, "Which attribute or frame differed, never a value.",
           history="verification_detail"),
    Column("change", TEXT, "New, changed or unchanged against earlier runs (the ledger's).",
           history="change"),
    Column("attempts", INTEGER, "Import jobs the file has been in (the ledger's count).",
           history="attempts"),
    # Not in the ledger: it describes the data store as it was when the run
    # ended (``dicom-import reconcile`` tells it as it is now).
    Column("conflict_attributes", TEXT,
           "Elements whose values differ from its series' primary image set, names only."),
    Column("patient_name", TEXT, "Patient's Name, with --include-phi only.", phi=True),
    Column("patient_id", TEXT, "Patient ID, with --include-phi only.", phi=True),
    Column("patient_birth_date", TEXT, "Patient's Birth Date, with --include-phi only.",
           phi=True),
)

_BY_NAME = {column.name: column for column in FILE_ROW}
# The default report's columns, in order; the PHI columns follow them when asked for.
FILE_COLUMNS = [column.name for column in FILE_ROW if not column.phi]
PHI_COLUMNS = [column.name for column in FILE_ROW if column.phi]
# Report column -> ledger_files column, for the outcome a file is left with.
LATEST_COLUMNS = {column.name: column.latest for column in FILE_ROW if column.latest}
# Report column -> ledger_outcomes column, for a run's history row.
HISTORY_COLUMNS = {column.name: column.history for column in FILE_ROW if column.history}


def report_columns(include_phi: bool) -> list[str]:
    return FILE_COLUMNS + PHI_COLUMNS if include_phi else FILE_COLUMNS


def parquet_schema(names: Sequence[str]) -> pa.Schema:
    """The declared parquet types of ``names``, in that order.

    Raises:
        ValueError: a name is not a declared column.
    """
    return pa.schema([pa.field(name, _declared(name).type.parquet) for name in names])


def file_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as report rows without PHI: every declared column, in order
    and of its declared type, empty cells None (``frame`` may hold only some),
    ``viewer_path`` derived from the row.

    Raises:
        ValueError: ``frame`` has a column the declaration lacks (misspelled,
            or never declared).
    """
    for name in frame.columns:
        _declared(name)
    rows = frame.reindex(columns=FILE_COLUMNS).astype(object)
    rows = rows.where(rows.notna(), None).astype(
        {name: _BY_NAME[name].type.pandas for name in FILE_COLUMNS})
    return rows.assign(viewer_path=viewer_paths(rows))


def _declared(name: str) -> Column:
    column = _BY_NAME.get(name)
    if column is None:
        raise ValueError(f"{name!r} is not a declared report column (tasks/report_row.py)")
    return column
