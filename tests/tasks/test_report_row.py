"""The per-file report row is declared once (tasks.report_row): what writes
it, what the ledger keeps of it and what is written again from the ledger
must agree with that declaration, and these tests say so when they drift."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from tasks.batch import make_batches
from tasks.discover import SourceFile
from tasks.ledger import RunLedger, engine_for, files_table, ledger_url, recorded_run
from tasks.ledger.schema import outcomes_table
from tasks.report import ReportWriter, build_file_report, rebuilt_report, write_report
from tasks.report_row import (
    FILE_COLUMNS,
    FILE_ROW,
    FLAG,
    HISTORY_COLUMNS,
    INTEGER,
    LATEST_COLUMNS,
    PHI_COLUMNS,
    TEXT,
    Column,
    file_rows,
    parquet_schema,
)
from tasks.statuses import Change, FileValidity
from tasks.validate import ValidationRecord
from tests.operations.claiming import claim

DATASTORE = "0123456789abcdef0123456789abcdef"
# ledger_outcomes columns that are the ledger's own, not the report's.
HISTORY_BOOKKEEPING = {"run_id", "datastore_id", "report_row", "recorded_at"}
LEDGER_COLUMNS = [
    *(pytest.param(files_table, c, c.latest, id=f"ledger_files.{c.latest}")
      for c in FILE_ROW if c.latest),
    *(pytest.param(outcomes_table, c, c.history, id=f"ledger_outcomes.{c.history}")
      for c in FILE_ROW if c.history),
]


@pytest.mark.parametrize(("table", "column", "stored"), LEDGER_COLUMNS)
def test_the_ledger_holds_each_declared_column_as_its_type(
    table: sa.Table, column: Column, stored: str
) -> None:
    """A declared ledger column needs its column in tasks/ledger/schema.py
    (and so an Alembic revision: test_ledger_migrations holds the two together)."""
    assert stored in table.c, f"{table.name} has no column {stored} for {column.name}"
    assert isinstance(table.c[stored].type, column.type.sql), \
        f"{table.name}.{stored} is {table.c[stored].type!r}, {column.name} a {column.type}"


def test_the_history_table_holds_nothing_the_row_does_not_declare() -> None:
    """A column added to ledger_outcomes alone would never be filled, nor
    come back in a rebuilt report."""
    undeclared = {c.name for c in outcomes_table.columns} - HISTORY_BOOKKEEPING \
        - set(HISTORY_COLUMNS.values())
    assert undeclared == set()


def test_phi_cannot_be_declared_for_the_ledger() -> None:
    assert not set(PHI_COLUMNS) & (set(LATEST_COLUMNS) | set(HISTORY_COLUMNS))
    with pytest.raises(ValueError, match="PHI"):
        Column("patient_sex", TEXT, "Patient's Sex.", phi=True, history="patient_sex")


def _report(include_phi: bool) -> pd.DataFrame:
    record = ValidationRecord(
        uri="/src/a.dcm", relative_path="a.dcm", size=10, status=FileValidity.VALID,
        sop_instance_uid="1.2.3", study_instance_uid="1.2", series_instance_uid="1.2.1",
        patient_name="Doe^Jane", patient_id="P1", patient_birth_date="19700101",
    )
    batches = make_batches([record], max_files=10, max_bytes=100)
    return build_file_report([record], batches, [], [], {}, include_phi=include_phi)


@pytest.mark.parametrize("include_phi", [False, True], ids=["default", "with-phi"])
def test_the_report_writer_writes_the_declared_columns_and_types(
    include_phi: bool, tmp_path: Path
) -> None:
    files = _report(include_phi)
    paths = write_report(files, pd.DataFrame(), str(tmp_path / "report"))

    written = pq.read_schema(next(Path(paths.files_parquet).glob("part-*.parquet")))
    declared = [c for c in FILE_ROW if include_phi or not c.phi]
    assert written.names == [c.name for c in declared]
    assert [written.field(c.name).type for c in declared] == [c.type.parquet for c in declared]


def test_an_empty_report_still_has_the_declared_columns(tmp_path: Path) -> None:
    paths = ReportWriter(str(tmp_path / "report")).close(pd.DataFrame(), {})

    written = pq.read_schema(next(Path(paths.files_parquet).glob("part-*.parquet")))
    assert written.remove_metadata() == parquet_schema(FILE_COLUMNS)


def test_a_column_nobody_declared_is_refused(tmp_path: Path) -> None:
    """Rows built by hand (a retry's, a stopped run's) and the writer both
    check their column names against the declaration."""
    with pytest.raises(ValueError, match="sorce_uri"):
        file_rows(pd.DataFrame({"sorce_uri": ["/src/a.dcm"]}))
    with pytest.raises(ValueError, match="extra"):
        ReportWriter(str(tmp_path / "report")).add_files(_report(False).assign(extra=1))


def _value(column: Column) -> object:
    if column.type is INTEGER:
        return 7
    if column.type is FLAG:
        return False
    return f"{column.name[:12]}-x"


def test_what_the_ledger_keeps_of_a_row_comes_back_as_declared(tmp_path: Path) -> None:
    """Every declared ledger column, filled, is recorded as the file's latest
    outcome and in the run's history, and the report rebuilt from the ledger
    has each history column back (the rest empty)."""
    url = ledger_url(None, str(tmp_path / "reports"))
    ledger = RunLedger(url, "row-run", DATASTORE)
    ledger.start_run("dicom-ingest", "/landing")
    source = SourceFile("/landing/a.dcm", 10, "v1", "a.dcm")
    claim(ledger, [source])
    row = {c.name: _value(c) for c in FILE_ROW if not c.phi}
    report = file_rows(pd.DataFrame([{**row, "source_uri": source.uri, "change": None,
                                      "attempts": None}]))

    recorded = ledger.record_outcomes(report)

    with engine_for(url).connect() as conn:
        latest = conn.execute(sa.select(files_table).where(files_table.c.uri == source.uri)).one()
    assert {name: getattr(latest, column) for name, column in LATEST_COLUMNS.items()} == {
        name: recorded.loc[0, name] for name in LATEST_COLUMNS}
    run = recorded_run(url, "row-run")
    rebuilt, _ = rebuilt_report(run.files, run.jobs)
    expected = file_rows(recorded.assign(
        **{name: None for name in FILE_COLUMNS if name not in HISTORY_COLUMNS}))
    pd.testing.assert_frame_equal(rebuilt, expected)
    assert (recorded.loc[0, "change"], recorded.loc[0, "attempts"]) == (Change.NEW, 0)
