"""Outcomes: what last happened to each file, and each run's history.

The rows recorded for a run are the rows of its report: the flow passes the
report DataFrame through :meth:`Outcomes.record_outcomes` and writes what
comes back (the same rows plus ``change`` and ``attempts``). What a run
recorded is enough to write its report again (:func:`recorded_run`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, cast

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tasks.ledger.files import IMPORTED, LedgerFile, ledger_file
from tasks.ledger.jobs import Jobs
from tasks.ledger.schema import (
    LedgerError,
    chunks,
    engine_for,
    files_table,
    insert_for,
    inventory_table,
    outcomes_table,
    run_jobs_table,
    runs_table,
)
from tasks.poll import JobOutcome
from tasks.report_row import HISTORY_COLUMNS, LATEST_COLUMNS, file_rows
from tasks.retry_policy import RETRYABLE
from tasks.statuses import Change, FileStatus

# One report row as the ledger reads and writes it: column -> value, None
# when empty.
_Row = dict[str, Any]
_RUN_JOB_COLUMNS = [c.name for c in run_jobs_table.columns
                    if c.name not in ("run_id", "datastore_id", "report_row")]


class Outcomes(Jobs):
    """Files' outcomes, recorded with the ends of the jobs they came from."""

    def failed_files(
        self, run_id: str | None = None, job_id: str | None = None
    ) -> list[LedgerFile]:
        """Files whose latest outcome is a failure of any kind, optionally only
        those that failed in a given run or job (whatever happened since).

        A file still imported but whose job output a later run found missing
        comes back with that outcome, ``output_missing``: it is to be looked
        up in the data store, and imported again only if absent.
        """
        query = sa.select(files_table).where(
            files_table.c.datastore_id == self.datastore_id,
            sa.or_(files_table.c.status.in_(RETRYABLE),
                   files_table.c.output_missing_run_id.is_not(None)),
        )
        if run_id or job_id:
            touched = sa.select(outcomes_table.c.uri).where(
                outcomes_table.c.datastore_id == self.datastore_id
            )
            if run_id:
                touched = touched.where(outcomes_table.c.run_id == run_id)
            if job_id:
                touched = touched.where(outcomes_table.c.job_id == job_id)
            query = query.where(files_table.c.uri.in_(touched))
        with self.engine.begin() as conn:
            rows = conn.execute(query.order_by(files_table.c.uri))
            return [
                replace(ledger_file(row), status=FileStatus.OUTPUT_MISSING.value)
                if row.output_missing_run_id else ledger_file(row)
                for row in rows
            ]

    def record_outcomes(
        self, report: pd.DataFrame, outcomes: Sequence[JobOutcome] = ()
    ) -> pd.DataFrame:
        """Record each report row as its file's latest outcome and release it.

        Returns the same rows with ``change`` and ``attempts`` added: the
        report is written from exactly what the ledger now holds.

        An ``output_missing`` row of a file the same job imported (its output
        read by an earlier run, gone since) leaves that outcome in place, in
        doubt (``output_missing_run_id``); it is still this run's history row.
        """
        now = self.now()
        # pandas types records as dict[Hashable, Any]; the report's labels are all str.
        rows = cast(list[_Row], report.astype(object).where(report.notna(), None)
                    .to_dict("records"))
        recorded: dict[str, _Row] = {}
        with self.engine.begin() as conn:
            # Positions over the whole report: its history rows keep its order.
            for chunk in chunks(enumerate(rows)):
                known = self._known(conn, [row["source_uri"] for _, row in chunk])
                mine = [(position, _as_recorded(row, known[row["source_uri"]]))
                        for position, row in chunk if row["source_uri"] in known]
                self._record_chunk(conn, mine, known, now)
                recorded.update((row["source_uri"], row) for _, row in mine)
            self._record_jobs_ended(conn, outcomes)
        uris = report["source_uri"]
        return report.assign(
            change=uris.map({uri: row["change"] for uri, row in recorded.items()}),
            attempts=uris.map({uri: row["attempts"] for uri, row in recorded.items()})
            .astype("Int64"),
        )

    def _known(self, conn: Connection, uris: list[str]) -> dict[str, _Known]:
        """What the ledger holds of those of these files it knows (a row of a
        file it does not know is not recorded)."""
        table = files_table
        return {row.uri: _Known(row.claim_change, int(row.attempts), row.status, row.job_id)
                for row in conn.execute(
            sa.select(table.c.uri, table.c.claim_change, table.c.attempts, table.c.status,
                      table.c.job_id)
            .where(table.c.datastore_id == self.datastore_id, table.c.uri.in_(uris))
        )}

    def _record_chunk(
        self, conn: Connection, rows: Sequence[tuple[int, _Row]],
        known: Mapping[str, _Known], now: datetime,
    ) -> None:
        """Rows (with their positions in the report) of files the ledger knows."""
        latest: list[_Row] = []
        in_doubt: list[_Row] = []
        for _, row in rows:
            (in_doubt if _stays_imported(row, known[row["source_uri"]]) else latest).append(row)
        self._leave_in_doubt(conn, in_doubt, now)
        self._record_latest(conn, latest, now)
        self._mark_listed_done(conn, [row["source_uri"] for _, row in rows])
        self._record_history(conn, [self._history_row(row, position, now)
                                    for position, row in rows])

    def _leave_in_doubt(self, conn: Connection, rows: Sequence[_Row], now: datetime) -> None:
        if not rows:
            return
        conn.execute(
            sa.update(files_table)
            .where(files_table.c.datastore_id == self.datastore_id,
                   files_table.c.uri == sa.bindparam("file_uri"))
            .values(output_missing_run_id=self.run_id, claim_owner=None,
                    claim_expires_at=None, updated_at=now),
            [{"file_uri": row["source_uri"]} for row in rows],
        )

    def _record_latest(self, conn: Connection, rows: Sequence[_Row], now: datetime) -> None:
        """Each file's latest outcome, its content identity as the claim saw
        it, and its claim released."""
        if not rows:
            return
        table = files_table
        conn.execute(
            sa.update(table)
            .where(table.c.datastore_id == self.datastore_id,
                   table.c.uri == sa.bindparam("file_uri"))
            .values(
                **{column: sa.bindparam(f"file_{column}") for column in LATEST_COLUMNS.values()},
                change=table.c.claim_change, run_id=self.run_id, output_missing_run_id=None,
                version=sa.func.coalesce(table.c.claim_version, table.c.version),
                claim_owner=None, claim_expires_at=None, updated_at=now,
            ),
            [{"file_uri": row["source_uri"],
              **{f"file_{column}": row[name] for name, column in LATEST_COLUMNS.items()}}
             for row in rows],
        )

    def _mark_listed_done(self, conn: Connection, uris: Sequence[str]) -> None:
        """In every inventory that lists the files: whoever listed them must
        not take them again (tasks.ledger.inventory)."""
        conn.execute(
            sa.update(inventory_table)
            .where(inventory_table.c.datastore_id == self.datastore_id,
                   inventory_table.c.uri.in_(uris),
                   inventory_table.c.done.is_(False))
            .values(done=True, done_by=self.run_id)
        )

    def _record_history(self, conn: Connection, history: Sequence[_Row]) -> None:
        """The run's history rows; a row recorded again (the same run
        reporting a file twice) replaces the first."""
        if not history:
            return
        stmt = insert_for(conn)(outcomes_table)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["run_id", "datastore_id", "uri"],
            set_={c: stmt.excluded[c] for c in history[0]
                  if c not in ("run_id", "datastore_id", "uri")},
        ), history)

    def _history_row(self, row: Mapping[str, Any], position: int, now: datetime) -> _Row:
        return {"run_id": self.run_id, "datastore_id": self.datastore_id,
                **{column: row.get(name) for name, column in HISTORY_COLUMNS.items()},
                "report_row": position, "recorded_at": now}

    def record_report(self, folder: str, jobs: pd.DataFrame) -> None:
        """Where this run's report goes and its job rows, before it is written:
        a run killed while writing it leaves what ``dicom-import report``
        needs to write it again."""
        frame = jobs.reindex(columns=_RUN_JOB_COLUMNS).astype(object)
        # Keyed by _RUN_JOB_COLUMNS, strings; pandas types any column label as Hashable.
        rows = cast(list[dict[str, Any]], frame.where(frame.notna(), None).to_dict("records"))
        with self.engine.begin() as conn:
            conn.execute(sa.update(runs_table).where(runs_table.c.run_id == self.run_id)
                         .values(report_folder=folder))
            conn.execute(sa.delete(run_jobs_table).where(
                run_jobs_table.c.run_id == self.run_id,
                run_jobs_table.c.datastore_id == self.datastore_id))
            if rows:
                conn.execute(sa.insert(run_jobs_table), [
                    {"run_id": self.run_id, "datastore_id": self.datastore_id,
                     "report_row": position, **row}
                    for position, row in enumerate(rows)])

    def imported_as_other_bytes(self, sha256: Mapping[str, str | None]) -> set[str]:
        """Of these files (URI -> the SHA-256 of their bytes now, if known),
        those some run imported with other bytes, or bytes not known: the
        data store may hold their instance from then, which says nothing of
        whether a later job stored these bytes."""
        found: set[str] = set()
        with self.engine.begin() as conn:
            for chunk in chunks(sha256):
                found.update(
                    row.uri for row in conn.execute(
                        sa.select(outcomes_table.c.uri, outcomes_table.c.sha256).where(
                            outcomes_table.c.datastore_id == self.datastore_id,
                            outcomes_table.c.uri.in_(chunk),
                            outcomes_table.c.status.in_(sorted(IMPORTED))))
                    if row.sha256 is None or row.sha256 != sha256[row.uri]
                )
        return found

    def record_given_up(self, items: Sequence[LedgerFile], max_attempts: int) -> pd.DataFrame:
        """Mark retryable files past the attempt limit; returns their report rows."""
        now = self.now()
        reasons = {
            item.uri: f"Gave up after {item.attempts} attempts (limit {max_attempts}); "
                      f"last outcome {item.status}: {item.reason or item.error_type}"
            for item in items
        }
        rows: list[_Row] = [{"source_uri": item.uri, "size": item.size,
                 "sop_instance_uid": item.sop_instance_uid,
                 "study_instance_uid": item.study_instance_uid,
                 "series_instance_uid": item.series_instance_uid,
                 "sha256": item.sha256, "batch_id": item.batch_id, "job_id": item.job_id,
                 "status": FileStatus.GIVEN_UP.value,
                 "error_type": item.error_type, "error_message": reasons[item.uri],
                 "change": Change.UNCHANGED.value, "attempts": item.attempts}
                for item in items]
        with self.engine.begin() as conn:
            for chunk in chunks(items):
                conn.execute(
                    sa.update(files_table)
                    .where(files_table.c.datastore_id == self.datastore_id,
                           files_table.c.uri == sa.bindparam("file_uri"))
                    .values(status=FileStatus.GIVEN_UP.value, reason=sa.bindparam("file_reason"),
                            run_id=self.run_id, output_missing_run_id=None, updated_at=now),
                    [{"file_uri": item.uri, "file_reason": reasons[item.uri]} for item in chunk],
                )
            if rows:
                conn.execute(
                    insert_for(conn)(outcomes_table).on_conflict_do_nothing(),
                    [self._history_row(row, position, now) for position, row in enumerate(rows)],
                )
        return file_rows(pd.DataFrame(rows))


@dataclass(frozen=True)
class _Known:
    """What the ledger holds of a file whose outcome is being recorded."""

    # Against earlier runs, as the run's claim found it.
    change: str | None
    attempts: int
    # The latest outcome so far.
    status: str | None
    job_id: str | None


def _as_recorded(row: Mapping[str, Any], known: _Known) -> _Row:
    """The row with what the ledger says of its file: its change against
    earlier runs, and the import jobs it has been in."""
    return {**row, "change": known.change, "attempts": known.attempts}


def _stays_imported(row: Mapping[str, Any], known: _Known) -> bool:
    """An ``output_missing`` row of a file the same job imported: its
    imported outcome stands, in doubt."""
    return (row["status"] == FileStatus.OUTPUT_MISSING
            and known.status in IMPORTED and known.job_id == row["job_id"])


@dataclass(frozen=True)
class RecordedRun:
    """What the ledger holds of one run's report."""

    run_id: str
    flow: str
    datastore_id: str
    report_folder: str | None
    # Report columns, in the order the run wrote its rows (no PHI, no counts).
    files: pd.DataFrame
    jobs: pd.DataFrame


def recorded_run(url: str, run_id: str) -> RecordedRun:
    """A run's report rows as it recorded them, to write its report again.

    Raises:
        LedgerError: the ledger has no such run.
    """
    history = {column: report for report, column in HISTORY_COLUMNS.items()}
    with engine_for(url).begin() as conn:
        run = conn.execute(sa.select(runs_table).where(runs_table.c.run_id == run_id)).first()
        if run is None:
            raise LedgerError(f"The ledger has no run {run_id}: give the flow run ID shown in "
                              "the Prefect UI, and the report location (or ledger URL) of "
                              "that run.")
        outcomes = outcomes_table.c
        files = pd.DataFrame(
            [row._asdict() for row in conn.execute(
                sa.select(*(outcomes[c] for c in history))
                .where(outcomes.run_id == run_id, outcomes.datastore_id == run.datastore_id)
                # Calls to record_outcomes in order, each call's rows in its order.
                .order_by(outcomes.recorded_at, outcomes.report_row, outcomes.uri)
            )],
            columns=list(history),
        ).rename(columns=history)
        jobs = pd.DataFrame(
            [row._asdict() for row in conn.execute(
                sa.select(*(run_jobs_table.c[c] for c in _RUN_JOB_COLUMNS))
                .where(run_jobs_table.c.run_id == run_id,
                       run_jobs_table.c.datastore_id == run.datastore_id)
                .order_by(run_jobs_table.c.report_row)
            )],
            columns=_RUN_JOB_COLUMNS,
        )
    return RecordedRun(run_id, run.flow, run.datastore_id, run.report_folder, files, jobs)
