"""Outcomes: what last happened to each file, and each run's history.

The rows recorded for a run are the rows of its report: the flow passes the
report DataFrame through :meth:`Outcomes.record_outcomes` and writes what
comes back (the same rows plus ``change`` and ``attempts``). What a run
recorded is enough to write its report again (:func:`recorded_run`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, cast

import pandas as pd
import sqlalchemy as sa

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
from tasks.retry_policy import RETRYABLE
from tasks.statuses import Change, FileStatus

# Report column -> files_table column, for the outcome a file is left with.
_OUTCOME_COLUMNS = {
    "status": "status", "error_type": "error_type", "error_message": "reason",
    "job_id": "job_id", "batch_id": "batch_id", "image_set_id": "image_set_id",
    "size": "size", "sha256": "sha256", "sop_instance_uid": "sop_instance_uid",
    "study_instance_uid": "study_instance_uid", "series_instance_uid": "series_instance_uid",
}

# Report column -> ledger_outcomes column, for a run's history row.
_HISTORY_COLUMNS = {
    "source_uri": "uri", "status": "status", "job_id": "job_id",
    "image_set_id": "image_set_id", "error_type": "error_type", "error_message": "reason",
    **{c: c for c in ("size", "sha256", "sop_instance_uid", "study_instance_uid",
                      "series_instance_uid", "series_number", "transfer_syntax", "batch_id",
                      "staged_key", "is_primary", "image_set_version", "warning_codes",
                      "reason_code", "expected_warnings", "verification",
                      "verification_detail")},
}
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
        table = files_table
        rows = report.astype(object).where(report.notna(), None).to_dict("records")
        changes: dict[str, str | None] = {}
        attempts: dict[str, int] = {}
        start = 0
        with self.engine.begin() as conn:
            for chunk in chunks(rows):
                uris = [r["source_uri"] for r in chunk]
                known = {
                    row.uri: row
                    for row in conn.execute(
                        sa.select(table.c.uri, table.c.claim_change, table.c.attempts,
                                  table.c.status, table.c.job_id)
                        .where(table.c.datastore_id == self.datastore_id,
                               table.c.uri.in_(uris))
                    )
                }
                mine: list[dict[Hashable, Any]] = []
                in_doubt: list[dict[Hashable, Any]] = []
                for row in chunk:
                    previous = known.get(row["source_uri"])
                    if previous is None:
                        continue
                    changes[row["source_uri"]] = previous.claim_change
                    attempts[row["source_uri"]] = int(previous.attempts)
                    kept = (row["status"] == FileStatus.OUTPUT_MISSING
                            and previous.status in IMPORTED
                            and previous.job_id == row["job_id"])
                    (in_doubt if kept else mine).append(row)
                if in_doubt:
                    conn.execute(
                        sa.update(table)
                        .where(table.c.datastore_id == self.datastore_id,
                               table.c.uri == sa.bindparam("file_uri"))
                        .values(output_missing_run_id=self.run_id, claim_owner=None,
                                claim_expires_at=None, updated_at=now),
                        [{"file_uri": row["source_uri"]} for row in in_doubt],
                    )
                if mine:
                    conn.execute(
                        sa.update(table)
                        .where(table.c.datastore_id == self.datastore_id,
                               table.c.uri == sa.bindparam("file_uri"))
                        .values(
                            **{column: sa.bindparam(f"file_{column}")
                               for column in _OUTCOME_COLUMNS.values()},
                            change=table.c.claim_change, run_id=self.run_id,
                            output_missing_run_id=None,
                            version=sa.func.coalesce(table.c.claim_version, table.c.version),
                            claim_owner=None, claim_expires_at=None, updated_at=now,
                        ),
                        [{"file_uri": row["source_uri"],
                          **{f"file_{column}": row[field]
                             for field, column in _OUTCOME_COLUMNS.items()}}
                         for row in mine],
                    )
                history = [
                    self._history_row(r, changes[r["source_uri"]], attempts[r["source_uri"]],
                                      position, now)
                    for position, r in enumerate(chunk, start=start)
                    if r["source_uri"] in changes
                ]
                start += len(chunk)
                # In every inventory that lists the file: whoever listed it
                # must not take it again (tasks.ledger.inventory).
                conn.execute(
                    sa.update(inventory_table)
                    .where(inventory_table.c.datastore_id == self.datastore_id,
                           inventory_table.c.uri.in_([uri for uri in uris if uri in changes]),
                           inventory_table.c.done.is_(False))
                    .values(done=True, done_by=self.run_id)
                )
                if history:
                    stmt = insert_for(conn)(outcomes_table)
                    conn.execute(stmt.on_conflict_do_update(
                        index_elements=["run_id", "datastore_id", "uri"],
                        set_={c: stmt.excluded[c] for c in history[0]
                              if c not in ("run_id", "datastore_id", "uri")},
                    ), history)
            self._record_jobs_ended(conn, outcomes)
        return report.assign(
            change=report["source_uri"].map(changes),
            attempts=report["source_uri"].map(attempts).astype("Int64"),
        )

    def _history_row(
        self, row: Mapping[Hashable, Any], change: str | None, attempts: int, position: int,
        now: datetime,
    ) -> dict[str, Any]:
        return {"run_id": self.run_id, "datastore_id": self.datastore_id,
                **{column: row.get(field) for field, column in _HISTORY_COLUMNS.items()},
                "change": change, "attempts": attempts, "report_row": position,
                "recorded_at": now}

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

    def record_given_up(self, items: Sequence[LedgerFile], max_attempts: int) -> pd.DataFrame:
        """Mark retryable files past the attempt limit; returns their report rows."""
        now = self.now()
        reasons = {
            item.uri: f"Gave up after {item.attempts} attempts (limit {max_attempts}); "
                      f"last outcome {item.status}: {item.reason or item.error_type}"
            for item in items
        }
        rows: list[dict[Hashable, Any]]
        rows = [{"source_uri": item.uri, "size": item.size,
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
                    [self._history_row(row, row["change"], row["attempts"], position, now)
                     for position, row in enumerate(rows)],
                )
        return pd.DataFrame(rows)


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
    history = {column: report for report, column in _HISTORY_COLUMNS.items()}
    with engine_for(url).begin() as conn:
        run = conn.execute(sa.select(runs_table).where(runs_table.c.run_id == run_id)).first()
        if run is None:
            raise LedgerError(f"The ledger has no run {run_id}: give the flow run ID shown in "
                              "the Prefect UI, and the report location (or ledger URL) of "
                              "that run.")
        outcomes = outcomes_table.c
        files = pd.DataFrame(
            [row._asdict() for row in conn.execute(
                sa.select(*(outcomes[c] for c in (*history, "change", "attempts")))
                .where(outcomes.run_id == run_id, outcomes.datastore_id == run.datastore_id)
                # Calls to record_outcomes in order, each call's rows in its order.
                .order_by(outcomes.recorded_at, outcomes.report_row, outcomes.uri)
            )],
            columns=[*history, "change", "attempts"],
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
