"""The ledger's tables and how to reach them: SQLite by default (a file beside
the reports), PostgreSQL for a shared deployment, on SQLAlchemy Core.

SQLite transactions all begin IMMEDIATE (the database write lock), so that of
two concurrent runs exactly one decides at a time; PostgreSQL gets row locks
(``SELECT ... FOR UPDATE``) from the parts that need them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import ConnectionPoolEntry

from import_rules.rules import MAX_UID_LENGTH
from tasks.ledger.migrations import upgrade
from tasks.statuses import Landing

# Files per claim transaction: long enough to amortise the lock, short
# enough that a concurrent run waits milliseconds, not seconds.
CLAIM_CHUNK = 500


class LedgerError(Exception):
    """The ledger cannot be opened as configured; the message says what to set."""


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out: SQLite keeps no zone, PostgreSQL does."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: datetime | None, dialect: sa.Dialect
    ) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

files_table = sa.Table(
    "ledger_files",
    metadata,
    sa.Column("datastore_id", sa.String(64), primary_key=True),
    sa.Column("uri", sa.String(2048), primary_key=True),
    # The source the file was found under and its path below it: a retry
    # stages it again under the same relative path.
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("relative_path", sa.Text, nullable=False),
    # Identity of the content the latest outcome is about.
    sa.Column("size", sa.BigInteger),
    sa.Column("version", sa.String(256)),
    sa.Column("sha256", sa.String(64)),
    sa.Column("sop_instance_uid", sa.String(MAX_UID_LENGTH)),
    sa.Column("study_instance_uid", sa.String(MAX_UID_LENGTH)),
    sa.Column("series_instance_uid", sa.String(MAX_UID_LENGTH)),
    # Latest outcome.
    sa.Column("status", sa.String(32)),
    sa.Column("change", sa.String(16)),
    sa.Column("error_type", sa.String(256)),
    sa.Column("reason", sa.Text),
    sa.Column("job_id", sa.String(32)),
    sa.Column("batch_id", sa.String(16)),
    sa.Column("image_set_id", sa.String(32)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("run_id", sa.String(64)),
    # The run that last could neither read the output of the job that imported
    # this file nor find it in the data store: the file's imported outcome
    # stands, in doubt, until retry_failed looks it up again.
    sa.Column("output_missing_run_id", sa.String(64)),
    # The current claim, and what the claiming run saw (recorded as the
    # content identity only once an outcome exists, so that a run killed
    # after claiming never makes a changed file look unchanged).
    sa.Column("claim_owner", sa.String(64)),
    sa.Column("claim_expires_at", UtcDateTime),
    sa.Column("claim_size", sa.BigInteger),
    sa.Column("claim_version", sa.String(256)),
    sa.Column("claim_change", sa.String(16)),
    sa.Column("first_seen_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Index("ix_ledger_files_status", "datastore_id", "status"),
    sa.Index("ix_ledger_files_job", "datastore_id", "job_id"),
    sa.Index("ix_ledger_files_claim", "claim_owner"),
    # Duplicates across the windows of one run (tasks.ledger.inventory).
    sa.Index("ix_ledger_files_sop", "datastore_id", "sop_instance_uid"),
)

jobs_table = sa.Table(
    "ledger_jobs",
    metadata,
    sa.Column("datastore_id", sa.String(64), primary_key=True),
    sa.Column("job_id", sa.String(32), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("batch_id", sa.String(16), nullable=False),
    sa.Column("batch_digest", sa.String(64), nullable=False),
    sa.Column("input_s3_uri", sa.Text, nullable=False),
    sa.Column("status", sa.String(16)),
    sa.Column("message", sa.Text),
    # The job's own output folder, known once it ended.
    sa.Column("output_s3_uri", sa.Text),
    # True once the files' outcomes from this job's output are recorded; a
    # job started by a run that died before that is resumed by retry_failed.
    sa.Column("outcome_recorded", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("submitted_at", UtcDateTime, nullable=False),
    # An import job, or a STOW-RS request (tasks.statuses.Landing), recorded
    # before it is sent: its input_s3_uri is then the URL it was sent to.
    sa.Column("landing", sa.String(8), nullable=False, server_default=Landing.JOB.value),
)

outcomes_table = sa.Table(
    "ledger_outcomes",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("datastore_id", sa.String(64), primary_key=True),
    sa.Column("uri", sa.String(2048), primary_key=True),
    sa.Column("change", sa.String(16)),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("job_id", sa.String(32)),
    sa.Column("image_set_id", sa.String(32)),
    sa.Column("error_type", sa.String(256)),
    sa.Column("reason", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("recorded_at", UtcDateTime, nullable=False),
    # The rest of the run's report row, so that the report can be written
    # again from here alone (``dicom-import report``); never PHI.
    sa.Column("report_row", sa.Integer),
    sa.Column("size", sa.BigInteger),
    sa.Column("sha256", sa.String(64)),
    sa.Column("sop_instance_uid", sa.String(MAX_UID_LENGTH)),
    sa.Column("study_instance_uid", sa.String(MAX_UID_LENGTH)),
    sa.Column("series_instance_uid", sa.String(MAX_UID_LENGTH)),
    # As written: the import takes any (the rules read neither's length).
    sa.Column("series_number", sa.Text),
    sa.Column("transfer_syntax", sa.Text),
    sa.Column("batch_id", sa.String(16)),
    sa.Column("staged_key", sa.Text),
    sa.Column("is_primary", sa.Boolean),
    sa.Column("image_set_version", sa.Integer),
    sa.Column("warning_codes", sa.Text),
    sa.Column("reason_code", sa.String(64)),
    sa.Column("expected_warnings", sa.Text),
    sa.Column("verification", sa.String(16)),
    sa.Column("verification_detail", sa.Text),
    sa.Column("landing", sa.String(8)),
    sa.Index("ix_ledger_outcomes_job", "datastore_id", "job_id"),
)

# A run's job report rows, as written (the per-status counts are not kept:
# they are counted again from the run's outcomes).
run_jobs_table = sa.Table(
    "ledger_run_jobs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("datastore_id", sa.String(64), primary_key=True),
    sa.Column("batch_id", sa.String(16), primary_key=True),
    sa.Column("report_row", sa.Integer, nullable=False),
    sa.Column("job_id", sa.String(32)),
    sa.Column("job_status", sa.String(16)),
    sa.Column("message", sa.Text),
    sa.Column("files", sa.Integer),
    sa.Column("bytes", sa.BigInteger),
    sa.Column("input_s3_uri", sa.Text),
    sa.Column("output_s3_uri", sa.Text),
    sa.Column("scanned_files", sa.Integer),
    sa.Column("imported_files", sa.Integer),
    sa.Column("generated_image_sets", sa.Integer),
    sa.Column("landing", sa.String(8)),
)

# A source as one listing saw it, handed out in windows (tasks.ledger.inventory).
# An inventory is a run's own, or a migration's, shared by its child runs.
inventory_table = sa.Table(
    "ledger_inventory",
    metadata,
    sa.Column("inventory_id", sa.String(64), primary_key=True),
    sa.Column("datastore_id", sa.String(64), primary_key=True),
    sa.Column("uri", sa.String(2048), primary_key=True),
    sa.Column("relative_path", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("version", sa.String(256), nullable=False),
    sa.Column("change", sa.String(16), nullable=False),
    # Why a listing left the file alone (retry policy; never with reimport), else NULL.
    sa.Column("skip", sa.String(16)),
    # An outcome was recorded for the file since it was listed, by this
    # inventory's runs or any other: nobody takes it from this inventory again.
    sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("done_by", sa.String(64)),
    # The run that last claimed it: a run never takes a file twice, whatever
    # became of it (a sibling may, once that run is found dead).
    sa.Column("taken_by", sa.String(64)),
    sa.Index("ix_ledger_inventory_file", "datastore_id", "uri"),
)
# Windows are claimed from the rows not done yet, in URI order: without this,
# each window would scan past every row already done.
sa.Index("ix_ledger_inventory_todo", inventory_table.c.inventory_id,
         inventory_table.c.datastore_id, inventory_table.c.uri,
         sqlite_where=inventory_table.c.done.is_(False),
         postgresql_where=inventory_table.c.done.is_(False))

# The file each inventory keeps of each SOP instance: the first window to
# name one (valid, first of its window) inserts it, and a later file of that
# instance, in any window of any run of the inventory, is its duplicate. The
# key makes "first" atomic between concurrent windows of a migration, even
# before either is recorded.
inventory_instances_table = sa.Table(
    "ledger_inventory_instances",
    metadata,
    sa.Column("inventory_id", sa.String(64), primary_key=True),
    sa.Column("datastore_id", sa.String(64), primary_key=True),
    sa.Column("sop_instance_uid", sa.String(MAX_UID_LENGTH), primary_key=True),
    sa.Column("uri", sa.String(2048), nullable=False),
)

# Every image set write dicom-reconcile made or tried (tasks.reconcile_record).
reconcile_changes_table = sa.Table(
    "reconcile_changes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("datastore_id", sa.String(64), nullable=False),
    # The non-primary image set the operator's decision is about.
    sa.Column("decided_image_set_id", sa.String(32), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    # UpdateImageSetMetadata, CopyImageSet or DeleteImageSet.
    sa.Column("operation", sa.String(32), nullable=False),
    # The image set the operation wrote, and its versions around the write
    # (before: none for a copy into a new set; after: none for a deletion or
    # a refused write).
    sa.Column("image_set_id", sa.String(32)),
    sa.Column("version_before", sa.String(32)),
    sa.Column("version_after", sa.String(32)),
    # For a copy: the set copied from, at the version copied.
    sa.Column("source_image_set_id", sa.String(32)),
    sa.Column("source_version", sa.String(32)),
    # Keywords corrected (";"-separated), never their values.
    sa.Column("attributes", sa.Text),
    sa.Column("forced", sa.Boolean, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("recorded_at", UtcDateTime, nullable=False),
    sa.Index("ix_reconcile_changes_decided", "datastore_id", "decided_image_set_id"),
)

# Where each file's instance lives after dicom-reconcile copied the
# non-primary image set it had landed in (tasks.reconcile_record): a file
# whose outcome names that set is found here, by verification and retries.
reconcile_placements_table = sa.Table(
    "reconcile_placements",
    metadata,
    sa.Column("datastore_id", sa.String(64), primary_key=True),
    sa.Column("uri", sa.String(2048), primary_key=True),
    # The non-primary set the file's outcome names (deleted once copied).
    sa.Column("from_image_set_id", sa.String(32), primary_key=True),
    # The primary set that holds its instance now, at the version the copy made.
    sa.Column("image_set_id", sa.String(32), nullable=False),
    sa.Column("image_set_version", sa.String(32)),
    # The instance's study and series there (a decision may correct them).
    sa.Column("study_instance_uid", sa.String(MAX_UID_LENGTH)),
    sa.Column("series_instance_uid", sa.String(MAX_UID_LENGTH)),
    # Keywords whose values the decision left other than the import stored
    # (";"-separated; corrections, or the primary set's values kept), never values.
    sa.Column("attributes", sa.Text),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("recorded_at", UtcDateTime, nullable=False),
)

runs_table = sa.Table(
    "ledger_runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("flow", sa.String(64), nullable=False),
    sa.Column("source", sa.Text),
    sa.Column("datastore_id", sa.String(64), nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("counts", sa.Text),
    # Renewed while the run holds claims; NULL for runs from before heartbeats.
    sa.Column("heartbeat_at", UtcDateTime),
    # The process holding the run's claims: on its own host, a run whose
    # process is gone is dead at once, without waiting for missed beats.
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("process_started_at", UtcDateTime),
    # Where the run writes its report (recorded before writing it).
    sa.Column("report_folder", sa.Text),
)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite ledger; None for another database (or SQLite in memory)."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str) -> Engine:
    """One engine per URL and process, the ledger migrated on first use."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = new_engine(url)
            upgrade(engine)
            _engines[url] = engine
        return engine


def dispose_engine(url: str) -> None:
    """Close a ledger's connections (a scratch ledger about to be deleted)."""
    with _engines_lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


# How long a ledger transaction waits for another process's on SQLite.
_SQLITE_WAIT_SECONDS = 60.0


def new_engine(url: str) -> Engine:
    """An engine of its own (:func:`engine_for` keeps one per URL, migrated)."""
    dialect = sa.engine.make_url(url).get_backend_name()
    if dialect == "sqlite":
        # Opening a SQLite ledger begins it, folder and all; commands that
        # must not begin one check first (tasks.ledger.location).
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Waits for another run's write transaction instead of failing with
        # "database is locked".
        engine = sa.create_engine(url, connect_args={"timeout": _SQLITE_WAIT_SECONDS})
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    if dialect == "postgresql":
        return sa.create_engine(url, pool_pre_ping=True)
    raise LedgerError(f"Ledger URL {url!r}: only SQLite and PostgreSQL URLs are supported.")


def _sqlite_connect(
    dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry
) -> None:
    # pysqlite's own implicit BEGIN is deferred (takes the write lock only at
    # the first write, and two readers then deadlock on upgrading); turn it
    # off and begin every transaction IMMEDIATE instead.
    dbapi_connection.isolation_level = None
    _in_wal_mode(dbapi_connection)
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _in_wal_mode(dbapi_connection: sqlite3.Connection) -> None:
    """Switching a new ledger to WAL needs an exclusive lock, and SQLite
    refuses it at once, without waiting, while another process opening the
    same new ledger holds one ("database is locked"): ask again until the
    other is done, for as long as a transaction would wait. Once a ledger is
    in WAL mode it stays so, and asking takes no lock."""
    deadline = time.monotonic() + _SQLITE_WAIT_SECONDS
    while True:
        try:
            mode = dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                dbapi_connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def insert_for(conn: Connection) -> Callable[[sa.Table], sqlite.Insert | postgresql.Insert]:
    """The dialect's INSERT, for ON CONFLICT clauses (SQLite's and PostgreSQL's)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert


_Item = TypeVar("_Item")


def chunks(items: Iterable[_Item], size: int = CLAIM_CHUNK) -> Iterator[list[_Item]]:
    """Lists of ``size`` items: statements per chunk, so that one transaction
    never holds the lock for long nor binds more parameters than allowed."""
    chunk: list[_Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
