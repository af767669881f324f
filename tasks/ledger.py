"""The ingestion ledger: every source object seen, and what last happened to it.

Reports are per run; a scheduled ingestion needs memory across runs (which
files were already imported, unchanged), two runs started together need one
place that decides which of them takes a file, and a retry needs the jobs that
a killed run started but never read. That is this module, on SQLAlchemy Core:
SQLite by default (a file beside the reports), PostgreSQL for a shared
deployment. The rows recorded for a run are the rows of its report: the flow
passes the report DataFrame through :meth:`RunLedger.record_outcomes` and
writes what comes back (the same rows plus ``change`` and ``attempts``).

Claims. A run claims a file before reading it, in one transaction per chunk
(SQLite: ``BEGIN IMMEDIATE``, i.e. the database write lock; PostgreSQL:
``SELECT ... FOR UPDATE`` on known rows and ``INSERT ... ON CONFLICT DO
NOTHING`` for new ones), so of two concurrent runs exactly one gets each file.
A claim names its owner (the Prefect flow run ID) and expires after a lease;
recording a file's outcome, or the end of the run, releases it. A run also
beats (its row's ``heartbeat_at``) while it holds claims, so a run killed
outright is presumed dead once it has missed a few beats, and its claims go
to the next run within minutes rather than when the lease ends.

Identity. A file is (data store ID, URI): the same file is new to another data
store. It is unchanged when its size and version (S3 ETag, local mtime) are
those recorded with its last outcome, or, when only the version moved (a
touched or re-uploaded file), when its SHA-256 is.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.engine import Connection, Engine

from tasks.batch import Batch
from tasks.checksum import sha256_of_file
from tasks.discover import SourceFile
from tasks.locations import S3Uri, is_s3
from tasks.poll import TERMINAL, JobOutcome, JobStatus
from tasks.process_identity import ProcessIdentity
from tasks.report import FileStatus
from tasks.validate import FileValidity, ValidationRecord

log = logging.getLogger(__name__)

LEDGER_FILE_NAME = "ledger.sqlite"
DEFAULT_LEASE_SECONDS = 12 * 3600.0
DEFAULT_PRESUMED_DEAD_SECONDS = 300.0
DEFAULT_MAX_ATTEMPTS = 3
# Beats per presumed-dead period: a run survives a few missed beats (a busy
# database, a pause) before its claims are taken.
_BEATS_PER_PERIOD = 5
# Files per claim transaction: long enough to amortise the lock, short
# enough that a concurrent run waits milliseconds, not seconds.
CLAIM_CHUNK = 500
# Report column -> files_table column, for the outcome a file is left with.
_OUTCOME_COLUMNS = {
    "status": "status", "error_type": "error_type", "error_message": "reason",
    "job_id": "job_id", "batch_id": "batch_id", "image_set_id": "image_set_id",
    "size": "size", "sha256": "sha256", "sop_instance_uid": "sop_instance_uid",
    "study_instance_uid": "study_instance_uid", "series_instance_uid": "series_instance_uid",
}


class LedgerError(Exception):
    """The ledger cannot be opened as configured; the message says what to set."""


class Change(StrEnum):
    """How a file compares with what the ledger recorded for it."""

    NEW = "new"
    CHANGED = "changed"
    UNCHANGED = "unchanged"


class RetryClass(StrEnum):
    AUTOMATIC = "automatic"
    IF_CHANGED = "if_changed"
    NEVER = "never"


# import_failed rows whose error_type says the service (or our own staging or
# output reading) failed, not the file: the same bytes may well succeed later.
SERVER_ERROR_TYPES = frozenset(
    {"InternalServerException", "StagingError", "ManifestError", "MissingFromOutput",
     "NotBatched"}
)
# Outcomes after which an unchanged file needs nothing from an ingestion run:
# done, or refused for a reason the same bytes will meet again, or waiting for
# retry_failed (which counts attempts). "validated" is a dry run: not done.
_SETTLED = frozenset(
    {FileStatus.IMPORTED.value, FileStatus.IMPORTED_WITH_WARNINGS.value,
     FileStatus.INVALID.value, FileStatus.DUPLICATE.value, FileStatus.IMPORT_FAILED.value,
     FileStatus.JOB_FAILED.value, FileStatus.TIMED_OUT.value, FileStatus.OUTPUT_MISSING.value,
     FileStatus.GIVEN_UP.value}
)
# Outcomes an unreadable job output never overwrites: the output that said so
# is gone, not wrong (the file stays imported, its outcome in doubt).
_IMPORTED = frozenset({FileStatus.IMPORTED.value, FileStatus.IMPORTED_WITH_WARNINGS.value})


class Skip(StrEnum):
    """Why an only_new ingestion leaves an unchanged file alone."""

    # Done, or refused for what its bytes are: the same bytes meet the same end.
    SETTLED = "settled"
    # A failure that may pass, tried max_attempts times: retry_failed --force.
    GIVEN_UP = "given_up"


def skip_when_unchanged(
    status: str | None, error_type: str | None, attempts: int, max_attempts: int
) -> Skip | None:
    """Whether an only_new run leaves an unchanged file alone.

    A failure that may pass with the same bytes (a FAILED job, a server
    error, a job nobody waited for to the end) is taken again: its next job
    gets a new client token (tasks.import_jobs), and a job still running is
    got back by its old one, so nothing is imported twice.
    """
    if status not in _SETTLED:
        return None
    if retry_class(status, error_type) is not RetryClass.AUTOMATIC:
        return Skip.SETTLED
    return Skip.GIVEN_UP if attempts >= max_attempts else None


def retry_class(status: str | None, error_type: str | None) -> RetryClass:
    """``output_missing`` is automatic too, but retry_failed first looks the
    file up in the data store (tasks.landed) and imports only what is not there."""
    if status in {FileStatus.JOB_FAILED, FileStatus.TIMED_OUT, FileStatus.OUTPUT_MISSING}:
        return RetryClass.AUTOMATIC
    if status == FileStatus.IMPORT_FAILED:
        return RetryClass.AUTOMATIC if error_type in SERVER_ERROR_TYPES else RetryClass.IF_CHANGED
    if status in {FileStatus.INVALID, FileStatus.DUPLICATE, FileStatus.GIVEN_UP}:
        return RetryClass.IF_CHANGED
    return RetryClass.NEVER


class _UtcDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out: SQLite keeps no zone, PostgreSQL does."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> Any:
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
    sa.Column("sop_instance_uid", sa.String(64)),
    sa.Column("study_instance_uid", sa.String(64)),
    sa.Column("series_instance_uid", sa.String(64)),
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
    sa.Column("claim_expires_at", _UtcDateTime),
    sa.Column("claim_size", sa.BigInteger),
    sa.Column("claim_version", sa.String(256)),
    sa.Column("claim_change", sa.String(16)),
    sa.Column("first_seen_at", _UtcDateTime, nullable=False),
    sa.Column("updated_at", _UtcDateTime, nullable=False),
    sa.Index("ix_ledger_files_status", "datastore_id", "status"),
    sa.Index("ix_ledger_files_job", "datastore_id", "job_id"),
    sa.Index("ix_ledger_files_claim", "claim_owner"),
    # Duplicates across the windows of one run (tasks.inventory).
    sa.Index("ix_ledger_files_sop", "datastore_id", "sop_instance_uid"),
)

# A source as one listing saw it, handed out in windows (tasks.inventory). An
# inventory is a run's own, or a migration's, shared by its child runs.
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
    # Why an only_new listing left the file alone (retry policy), else NULL.
    sa.Column("skip", sa.String(16)),
    # An outcome was recorded for the file since it was listed, by this
    # inventory's runs or any other: nobody takes it from this inventory again.
    sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("done_by", sa.String(64)),
    sa.Index("ix_ledger_inventory_file", "datastore_id", "uri"),
)
# Windows are claimed from the rows not done yet, in URI order: without this,
# each window would scan past every row already done.
sa.Index("ix_ledger_inventory_todo", inventory_table.c.inventory_id,
         inventory_table.c.datastore_id, inventory_table.c.uri,
         sqlite_where=inventory_table.c.done.is_(False),
         postgresql_where=inventory_table.c.done.is_(False))

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
    sa.Column("submitted_at", _UtcDateTime, nullable=False),
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
    sa.Column("recorded_at", _UtcDateTime, nullable=False),
    # The rest of the run's report row, so that the report can be written
    # again from here alone (``dicom-import report``); never PHI.
    sa.Column("report_row", sa.Integer),
    sa.Column("size", sa.BigInteger),
    sa.Column("sha256", sa.String(64)),
    sa.Column("sop_instance_uid", sa.String(64)),
    sa.Column("study_instance_uid", sa.String(64)),
    sa.Column("series_instance_uid", sa.String(64)),
    sa.Column("series_number", sa.String(32)),
    sa.Column("transfer_syntax", sa.String(64)),
    sa.Column("batch_id", sa.String(16)),
    sa.Column("staged_key", sa.Text),
    sa.Column("is_primary", sa.Boolean),
    sa.Column("image_set_version", sa.Integer),
    sa.Column("warning_codes", sa.Text),
    sa.Column("reason_code", sa.String(64)),
    sa.Column("expected_warnings", sa.Text),
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
)
# Report column -> ledger_outcomes column, for a run's history row.
_HISTORY_COLUMNS = {
    "source_uri": "uri", "status": "status", "job_id": "job_id",
    "image_set_id": "image_set_id", "error_type": "error_type", "error_message": "reason",
    **{c: c for c in ("size", "sha256", "sop_instance_uid", "study_instance_uid",
                      "series_instance_uid", "series_number", "transfer_syntax", "batch_id",
                      "staged_key", "is_primary", "image_set_version", "warning_codes",
                      "reason_code", "expected_warnings")},
}
_RUN_JOB_COLUMNS = [c.name for c in run_jobs_table.columns
                    if c.name not in ("run_id", "datastore_id", "report_row")]

runs_table = sa.Table(
    "ledger_runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("flow", sa.String(64), nullable=False),
    sa.Column("source", sa.Text),
    sa.Column("datastore_id", sa.String(64), nullable=False),
    sa.Column("started_at", _UtcDateTime, nullable=False),
    sa.Column("finished_at", _UtcDateTime),
    sa.Column("counts", sa.Text),
    # Renewed while the run holds claims; NULL for runs from before heartbeats.
    sa.Column("heartbeat_at", _UtcDateTime),
    # The process holding the run's claims: on its own host, a run whose
    # process is gone is dead at once, without waiting for missed beats.
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("process_started_at", _UtcDateTime),
    # Where the run writes its report (recorded before writing it).
    sa.Column("report_folder", sa.Text),
)


def ledger_url(configured: str | None, report_location: str) -> str:
    """The configured URL, else SQLite beside the reports.

    Raises:
        LedgerError: the reports go to S3, where SQLite cannot live.
    """
    if configured:
        return configured
    if is_s3(report_location):
        raise LedgerError(
            f"The report location {report_location} is on S3, where the SQLite ledger cannot "
            "live: set DICOM_IMPORT_LEDGER_URL to a SQLite path (sqlite:////var/lib/dicom-import/"
            "ledger.sqlite) or a PostgreSQL URL."
        )
    folder = Path(report_location).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / LEDGER_FILE_NAME}"


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str) -> Engine:
    """One engine per URL and process, schema created on first use."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create_engine(url)
            _create_schema(engine)
            _engines[url] = engine
        return engine


def dispose_engine(url: str) -> None:
    """Close a ledger's connections (a scratch ledger about to be deleted)."""
    with _engines_lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


def _create_engine(url: str) -> Engine:
    dialect = sa.engine.make_url(url).get_backend_name()
    if dialect == "sqlite":
        # Waits up to a minute for another run's write transaction instead of
        # failing with "database is locked".
        engine = sa.create_engine(url, connect_args={"timeout": 60})
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    if dialect == "postgresql":
        return sa.create_engine(url, pool_pre_ping=True)
    raise LedgerError(f"Ledger URL {url!r}: only SQLite and PostgreSQL URLs are supported.")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own implicit BEGIN is deferred (takes the write lock only at
    # the first write, and two readers then deadlock on upgrading); turn it
    # off and begin every transaction IMMEDIATE instead.
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _create_schema(engine: Engine) -> None:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two processes creating the schema at once would race on CREATE TABLE.
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(0x1ED6E2)))
        metadata.create_all(conn)
        _add_missing_columns(conn)


def _add_missing_columns(conn: Connection) -> None:
    """A ledger created by an earlier version lacks the columns added since;
    create_all makes missing tables, never missing columns."""
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                kind = column.type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(
                    f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"
                )


def _insert(conn: Connection) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _now() -> datetime:
    return datetime.now(UTC)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True)
class Holder:
    """A live run holding files this run wanted: who to ask, and when they free."""

    run_id: str
    files: int
    host: str | None
    pid: int | None
    last_beat: datetime | None
    # When the files go to another run if the holder stops beating now (or,
    # for a holder that never beats, when its lease ends).
    free_at: datetime

    def describe(self) -> str:
        where = f"on {self.host} (pid {self.pid})" if self.host else "on an unknown host"
        beat = f"last beat {self.last_beat:%Y-%m-%d %H:%M:%SZ}" if self.last_beat else "no beat"
        return (f"{self.files} files are held by run {self.run_id} {where}, {beat}; "
                f"they free at {self.free_at:%Y-%m-%d %H:%M:%SZ} if it stops")


@dataclass(frozen=True)
class ClaimResult:
    """What a run may process, and what it left alone (counted, not listed)."""

    files: list[SourceFile]
    changes: dict[str, Change]
    skipped_unchanged: int = 0
    claimed_by_other_runs: int = 0
    # Unchanged, failed max_attempts times for a reason that may pass.
    given_up: int = 0
    holders: tuple[Holder, ...] = ()
    # The jobs that imported the files skipped as unchanged, with counts.
    jobs_of_skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class _ClaimTally:
    """What the claim chunks of one run found, added up."""

    files: list[SourceFile] = field(default_factory=list)
    changes: dict[str, Change] = field(default_factory=dict)
    skipped: dict[Skip, int] = field(default_factory=lambda: dict.fromkeys(Skip, 0))
    held: dict[str, int] = field(default_factory=dict)
    lease_ends: dict[str, datetime] = field(default_factory=dict)
    jobs_of_skipped: Counter[str] = field(default_factory=Counter)

    def hold(self, owner: str | None, expires: datetime | None) -> None:
        owner = owner or "unknown"
        self.held[owner] = self.held.get(owner, 0) + 1
        if expires is not None:
            self.lease_ends[owner] = max(expires, self.lease_ends.get(owner, expires))


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


@dataclass(frozen=True)
class LedgerJob:
    """An import job started by some run, with the files it was given."""

    job_id: str
    datastore_id: str
    run_id: str
    batch: Batch
    input_s3_uri: str
    files: tuple[LedgerFile, ...] = field(default=())

    def staged_key(self, item: LedgerFile) -> str:
        return S3Uri.parse(self.input_s3_uri).join(item.relative_path).key


@dataclass(frozen=True)
class RunLedger:
    """One run's handle on the ledger: small and picklable, so tasks can take
    it as an argument and open the (per-process) engine themselves."""

    url: str
    run_id: str
    datastore_id: str
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    # A run whose last beat is older than this is presumed dead.
    presumed_dead_seconds: float = DEFAULT_PRESUMED_DEAD_SECONDS

    @property
    def engine(self) -> Engine:
        return engine_for(self.url)

    # -- runs -------------------------------------------------------------

    def start_run(self, flow: str, source: str | None) -> None:
        """A run started again (its flow run retried) keeps its first row and
        beats."""
        now = _now()
        process = ProcessIdentity.current()
        holder = {"heartbeat_at": now, "host": process.host, "pid": process.pid,
                  "process_started_at": process.started_at}
        with self.engine.begin() as conn:
            conn.execute(
                _insert(conn)(runs_table)
                .values(run_id=self.run_id, flow=flow, source=source,
                        datastore_id=self.datastore_id, started_at=now, **holder)
                .on_conflict_do_update(index_elements=["run_id"], set_=holder)
            )

    def beat(self) -> None:
        """Tell other runs this one is alive (its claims stand)."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(runs_table)
                .where(runs_table.c.run_id == self.run_id)
                .values(heartbeat_at=_now())
            )

    @contextmanager
    def holding_claims(self) -> Iterator[None]:
        """Beats in the background while the block runs, then releases every
        claim still held. A run killed inside the block stops beating, and its
        files go to the next run once it is presumed dead."""
        stopped = threading.Event()
        interval = self.presumed_dead_seconds / _BEATS_PER_PERIOD

        def beat_until_stopped() -> None:
            while not stopped.wait(interval):
                try:
                    self.beat()
                except sa.exc.SQLAlchemyError as error:
                    log.warning("Ledger heartbeat failed (trying again in %.0f s): %s",
                                interval, error)

        beating = threading.Thread(target=beat_until_stopped, name="ledger-heartbeat",
                                   daemon=True)
        beating.start()
        try:
            yield
        finally:
            stopped.set()
            beating.join()
            self.release()

    def finish_run(self, counts: Mapping[str, int]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(runs_table)
                .where(runs_table.c.run_id == self.run_id)
                .values(finished_at=_now(), counts=json.dumps(dict(counts), sort_keys=True))
            )

    # -- claims -----------------------------------------------------------

    def claim(
        self, source: str, files: Iterable[SourceFile], only_new: bool,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> ClaimResult:
        """Claim the files this run should process.

        With ``only_new``, an unchanged file is skipped without a claim when
        :func:`skip_when_unchanged` says so; a file claimed by another live
        run is skipped either way. Runs of this host whose process is gone
        lose their claims first: a rerun right after a kill does the work.
        """
        self.release_dead_runs()
        tally = _ClaimTally()
        for chunk in _chunks(files, CLAIM_CHUNK):
            self._claim_chunk(source, chunk, only_new, max_attempts, tally)
        return ClaimResult(tally.files, tally.changes, tally.skipped[Skip.SETTLED],
                           sum(tally.held.values()), tally.skipped[Skip.GIVEN_UP],
                           self._holders(tally), dict(tally.jobs_of_skipped))

    def release_dead_runs(self) -> list[str]:
        """Free the claims of unfinished runs of this host whose process is gone;
        returns their IDs."""
        host = ProcessIdentity.current().host
        with self.engine.begin() as conn:
            suspects = conn.execute(
                sa.select(runs_table.c.run_id, runs_table.c.pid,
                          runs_table.c.process_started_at)
                .where(runs_table.c.host == host, runs_table.c.finished_at.is_(None),
                       runs_table.c.run_id != self.run_id, runs_table.c.pid.is_not(None),
                       sa.exists().where(files_table.c.claim_owner == runs_table.c.run_id))
            ).all()
            dead = [row.run_id for row in suspects
                    if ProcessIdentity(host, row.pid, row.process_started_at).is_gone()]
            if dead:
                conn.execute(sa.update(files_table).where(files_table.c.claim_owner.in_(dead))
                             .values(claim_owner=None, claim_expires_at=None))
        for run_id in dead:
            log.info("Run %s of this host is gone: its claims are free.", run_id)
        return dead

    def _holders(self, tally: _ClaimTally) -> tuple[Holder, ...]:
        if not tally.held:
            return ()
        with self.engine.begin() as conn:
            runs = {row.run_id: row for row in conn.execute(
                sa.select(runs_table).where(runs_table.c.run_id.in_(list(tally.held))))}
        holders = []
        for run_id, count in sorted(tally.held.items(), key=lambda item: -item[1]):
            run = runs.get(run_id)
            lease_ends = tally.lease_ends.get(run_id) or _now()
            beat = run.heartbeat_at if run is not None else None
            free_at = (min(lease_ends, beat + timedelta(seconds=self.presumed_dead_seconds))
                       if beat is not None else lease_ends)
            holders.append(Holder(run_id, count, run.host if run is not None else None,
                                  run.pid if run is not None else None, beat, free_at))
        return tuple(holders)

    def _claim_chunk(
        self, source: str, chunk: list[SourceFile], only_new: bool, max_attempts: int,
        tally: _ClaimTally,
    ) -> None:
        table = files_table
        now = _now()
        expires = now + timedelta(seconds=self.lease_seconds)
        uris = [f.uri for f in chunk]
        with self.engine.begin() as conn:
            known = {
                row.uri: row
                for row in conn.execute(
                    # The claim rule is _claimable's, evaluated once, in the database.
                    sa.select(table, sa.not_(self._claimable(now)).label("held_elsewhere"))
                    .where(table.c.datastore_id == self.datastore_id, table.c.uri.in_(uris))
                    # One lock order for every run, so PostgreSQL never deadlocks.
                    .order_by(table.c.uri)
                    .with_for_update(of=table)
                )
            }
            changes: dict[str, Change] = {}
            new_rows = []
            reclaimed = []
            for item in chunk:
                row = known.get(item.uri)
                if row is None:
                    changes[item.uri] = Change.NEW
                    new_rows.append(self._new_row(source, item, now, expires))
                    continue
                if row.held_elsewhere:
                    tally.hold(row.claim_owner, row.claim_expires_at)
                    continue
                change = _compare(row, item)
                skip = only_new and change is Change.UNCHANGED and skip_when_unchanged(
                    row.status, row.error_type, int(row.attempts or 0), max_attempts)
                if skip:
                    tally.skipped[skip] += 1
                    if row.job_id:
                        tally.jobs_of_skipped[row.job_id] += 1
                    continue
                changes[item.uri] = change
                reclaimed.append({"file_uri": item.uri, "file_size": item.size,
                                  "file_version": item.version, "file_change": change.value,
                                  "file_path": item.relative_path})
            if reclaimed:
                # The rows are locked (FOR UPDATE; SQLite's transaction is
                # IMMEDIATE), so what the select decided still holds.
                conn.execute(
                    sa.update(table)
                    .where(table.c.datastore_id == self.datastore_id,
                           table.c.uri == sa.bindparam("file_uri"))
                    .values(claim_owner=self.run_id, claim_expires_at=expires,
                            claim_size=sa.bindparam("file_size"),
                            claim_version=sa.bindparam("file_version"),
                            claim_change=sa.bindparam("file_change"), source=source,
                            relative_path=sa.bindparam("file_path"), updated_at=now),
                    reclaimed,
                )
            if new_rows:
                inserted = set(
                    conn.execute(
                        _insert(conn)(table).on_conflict_do_nothing().returning(table.c.uri),
                        new_rows,
                    ).scalars()
                )
                lost = [row["uri"] for row in new_rows if row["uri"] not in inserted]
                # Another run inserted these between our read and our insert.
                for uri in lost:
                    del changes[uri]
                if lost:
                    for row in conn.execute(
                        sa.select(table.c.claim_owner, table.c.claim_expires_at)
                        .where(table.c.datastore_id == self.datastore_id,
                               table.c.uri.in_(lost))
                    ):
                        tally.hold(row.claim_owner, row.claim_expires_at)
        tally.files.extend(f for f in chunk if f.uri in changes)
        tally.changes.update(changes)

    def _new_row(
        self, source: str, item: SourceFile, now: datetime, expires: datetime
    ) -> dict[str, Any]:
        return {
            "datastore_id": self.datastore_id, "uri": item.uri, "source": source,
            "relative_path": item.relative_path, "attempts": 0,
            "claim_owner": self.run_id, "claim_expires_at": expires,
            "claim_size": item.size, "claim_version": item.version,
            "claim_change": Change.NEW.value, "first_seen_at": now, "updated_at": now,
        }

    def _claimable(self, now: datetime) -> sa.ColumnElement[bool]:
        """Unclaimed, ours, past its lease, or held by a run presumed dead."""
        table = files_table
        runs = runs_table
        last_beat_before = now - timedelta(seconds=self.presumed_dead_seconds)
        return sa.or_(
            table.c.claim_owner.is_(None),
            table.c.claim_owner == self.run_id,
            table.c.claim_expires_at <= now,
            sa.exists().where(runs.c.run_id == table.c.claim_owner,
                              runs.c.heartbeat_at <= last_beat_before),
        )

    def claim_known(self, items: Sequence[tuple[SourceFile, Change]]) -> list[SourceFile]:
        """Claim files the ledger already has (a retry), as they are now on
        storage; returns those won."""
        now = _now()
        expires = now + timedelta(seconds=self.lease_seconds)
        won: list[SourceFile] = []
        for chunk in _chunks(sorted(items, key=lambda pair: pair[0].uri), CLAIM_CHUNK):
            with self.engine.begin() as conn:
                for item, change in chunk:
                    count = conn.execute(
                        sa.update(files_table)
                        .where(files_table.c.datastore_id == self.datastore_id,
                               files_table.c.uri == item.uri, self._claimable(now))
                        .values(claim_owner=self.run_id, claim_expires_at=expires,
                                claim_size=item.size, claim_version=item.version,
                                claim_change=change.value, updated_at=now)
                    ).rowcount
                    if count:
                        won.append(item)
        return won

    def settle_unchanged(
        self, records: Sequence[ValidationRecord], only_new: bool
    ) -> tuple[list[ValidationRecord], int]:
        """Drop files whose version moved but whose bytes did not.

        Only bytes tell a touched file from an edited one, so the few files
        whose version moved at the size they were imported at are read and
        hashed (outside any transaction: the ledger is not locked meanwhile);
        they are released and their new version recorded, so the next run
        skips them unread.
        """
        if not only_new:
            return list(records), 0
        by_uri = {r.uri: r for r in records}
        with self.engine.begin() as conn:
            recorded = [
                (row.uri, row.sha256)
                for chunk in _chunks(by_uri, CLAIM_CHUNK)
                for row in conn.execute(
                    sa.select(files_table.c.uri, files_table.c.size, files_table.c.sha256).where(
                        files_table.c.datastore_id == self.datastore_id,
                        files_table.c.uri.in_(chunk),
                        files_table.c.claim_owner == self.run_id,
                        files_table.c.claim_change == Change.CHANGED.value,
                        files_table.c.status.in_(_SETTLED),
                        files_table.c.sha256.is_not(None),
                    )
                )
                if by_uri[row.uri].size == row.size
            ]
        same = [uri for uri, sha256 in recorded if sha256_of_file(uri) == sha256]
        now = _now()
        with self.engine.begin() as conn:
            for chunk in _chunks(same, CLAIM_CHUNK):
                conn.execute(
                    sa.update(files_table)
                    .where(files_table.c.datastore_id == self.datastore_id,
                           files_table.c.uri.in_(chunk))
                    .values(version=files_table.c.claim_version, claim_owner=None,
                            claim_expires_at=None, updated_at=now)
                )
        dropped = set(same)
        return [r for r in records if r.uri not in dropped], len(dropped)

    def renew(self) -> None:
        """Push this run's claims a full lease ahead (call between long stages)."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(files_table)
                .where(files_table.c.claim_owner == self.run_id)
                .values(claim_expires_at=_now() + timedelta(seconds=self.lease_seconds))
            )

    def release(self) -> int:
        """Give back every claim this run still holds (its files had no outcome)."""
        with self.engine.begin() as conn:
            return conn.execute(
                sa.update(files_table)
                .where(files_table.c.claim_owner == self.run_id)
                .values(claim_owner=None, claim_expires_at=None)
            ).rowcount

    # -- jobs -------------------------------------------------------------

    def record_job_started(self, job_id: str, batch: Batch, input_s3_uri: str) -> str:
        """Called right after StartDICOMImportJob answered, before any waiting:
        from here on a retry can find this job even if this run dies. Returns
        the run that started the job first (another one when a rerun got an
        earlier run's job back).

        Attempts count jobs, not calls: the same job returned again (a Prefect
        retry with the same client token) is not a new attempt, and changed
        bytes start counting from one again.
        """
        now = _now()
        table = files_table
        with self.engine.begin() as conn:
            conn.execute(
                _insert(conn)(jobs_table)
                .values(datastore_id=self.datastore_id, job_id=job_id, run_id=self.run_id,
                        batch_id=batch.batch_id, batch_digest=batch.digest,
                        input_s3_uri=input_s3_uri, status=JobStatus.SUBMITTED.value,
                        submitted_at=now)
                .on_conflict_do_nothing()
            )
            started_by: str = conn.execute(
                sa.select(jobs_table.c.run_id).where(
                    jobs_table.c.datastore_id == self.datastore_id,
                    jobs_table.c.job_id == job_id)
            ).scalar_one()
            sha256 = sa.bindparam("file_sha256")
            # The same job returned again (its client token): its outcome is
            # already known, and the rerun only reads its output once more.
            # (No IN: executemany cannot expand it.)
            known = sa.and_(table.c.job_id == job_id,
                            sa.or_(*(table.c.status == status for status in sorted(_IMPORTED))))
            started = (
                sa.update(table)
                .where(table.c.datastore_id == self.datastore_id,
                       table.c.uri == sa.bindparam("file_uri"))
                .values(
                    attempts=sa.case(
                        (table.c.job_id == job_id, table.c.attempts),
                        (table.c.sha256.is_not_distinct_from(sha256), table.c.attempts + 1),
                        else_=1,
                    ),
                    status=sa.case((known, table.c.status),
                                   else_=FileStatus.SUBMITTED.value),
                    job_id=job_id,
                    batch_id=batch.batch_id, run_id=self.run_id,
                    size=sa.bindparam("file_size"), version=table.c.claim_version,
                    sha256=sha256, sop_instance_uid=sa.bindparam("file_sop"),
                    study_instance_uid=sa.bindparam("file_study"),
                    series_instance_uid=sa.bindparam("file_series"),
                    error_type=sa.case((known, table.c.error_type)),
                    reason=sa.case((known, table.c.reason)),
                    image_set_id=sa.case((known, table.c.image_set_id)),
                    output_missing_run_id=sa.case((known, table.c.output_missing_run_id)),
                    updated_at=now,
                )
            )
            for chunk in _chunks(batch.files, CLAIM_CHUNK):
                conn.execute(started, [
                    {"file_uri": record.uri, "file_sha256": record.sha256,
                     "file_size": record.size, "file_sop": record.sop_instance_uid,
                     "file_study": record.study_instance_uid,
                     "file_series": record.series_instance_uid}
                    for record in chunk
                ])
        return started_by

    def failed_attempts(self, input_s3_uri: str, batch_digest: str) -> int:
        """Jobs of this very batch (same files, same input prefix) that ended
        FAILED: the number of the next attempt, which its client token carries."""
        with self.engine.begin() as conn:
            return int(conn.execute(
                sa.select(sa.func.count()).select_from(jobs_table).where(
                    jobs_table.c.datastore_id == self.datastore_id,
                    jobs_table.c.input_s3_uri == input_s3_uri,
                    jobs_table.c.batch_digest == batch_digest,
                    jobs_table.c.status == JobStatus.FAILED.value)
            ).scalar_one())

    def record_job_status(self, outcome: JobOutcome) -> None:
        """A job's end as soon as it is known, before its files' outcomes are:
        a run killed in between still leaves the next attempt a new token."""
        if outcome.job_id is None or outcome.status not in TERMINAL:
            return
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(jobs_table)
                .where(jobs_table.c.datastore_id == self.datastore_id,
                       jobs_table.c.job_id == outcome.job_id)
                .values(status=outcome.status.value, message=outcome.message,
                        output_s3_uri=outcome.output_s3_uri)
            )

    def unfinished_jobs(
        self, run_id: str | None = None, job_id: str | None = None
    ) -> list[LedgerJob]:
        """Jobs whose files still wait for an outcome: the run that started them
        died before reading their output, or stopped waiting (timed_out)."""
        pending = sa.select(files_table.c.job_id).where(
            files_table.c.datastore_id == self.datastore_id,
            files_table.c.status.in_([FileStatus.SUBMITTED.value, FileStatus.TIMED_OUT.value]),
        )
        query = sa.select(jobs_table).where(
            jobs_table.c.datastore_id == self.datastore_id, jobs_table.c.job_id.in_(pending)
        )
        if job_id:
            query = query.where(jobs_table.c.job_id == job_id)
        if run_id:
            query = query.where(
                sa.or_(jobs_table.c.run_id == run_id,
                       jobs_table.c.job_id.in_(self._outcome_jobs_of(run_id)))
            )
        with self.engine.begin() as conn:
            jobs = list(conn.execute(query.order_by(jobs_table.c.submitted_at)))
            result = []
            for job in jobs:
                members = tuple(
                    _ledger_file(row)
                    for row in conn.execute(
                        sa.select(files_table)
                        .where(files_table.c.datastore_id == self.datastore_id,
                               files_table.c.job_id == job.job_id,
                               files_table.c.status.in_(
                                   [FileStatus.SUBMITTED.value, FileStatus.TIMED_OUT.value]))
                        .order_by(files_table.c.uri)
                    )
                )
                batch = Batch(files=tuple(m.as_validation_record() for m in members),
                              digest=job.batch_digest)
                result.append(LedgerJob(job.job_id, self.datastore_id, job.run_id, batch,
                                        job.input_s3_uri, members))
        return result

    def _outcome_jobs_of(self, run_id: str) -> sa.Select[Any]:
        return sa.select(outcomes_table.c.job_id).where(
            outcomes_table.c.run_id == run_id,
            outcomes_table.c.datastore_id == self.datastore_id,
            outcomes_table.c.job_id.is_not(None),
        )

    # -- outcomes ---------------------------------------------------------

    def failed_files(
        self, run_id: str | None = None, job_id: str | None = None
    ) -> list[LedgerFile]:
        """Files whose latest outcome is a failure of any kind, optionally only
        those that failed in a given run or job (whatever happened since).

        A file still imported but whose job output a later run found missing
        comes back with that outcome, ``output_missing``: it is to be looked
        up in the data store, and imported again only if absent.
        """
        failed = [s for s in _SETTLED if retry_class(s, None) is not RetryClass.NEVER]
        query = sa.select(files_table).where(
            files_table.c.datastore_id == self.datastore_id,
            sa.or_(files_table.c.status.in_(failed),
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
                replace(_ledger_file(row), status=FileStatus.OUTPUT_MISSING.value)
                if row.output_missing_run_id else _ledger_file(row)
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
        now = _now()
        table = files_table
        rows = report.astype(object).where(report.notna(), None).to_dict("records")
        changes: dict[str, str | None] = {}
        attempts: dict[str, int] = {}
        start = 0
        with self.engine.begin() as conn:
            for chunk in _chunks(rows, CLAIM_CHUNK):
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
                mine, in_doubt = [], []
                for row in chunk:
                    previous = known.get(row["source_uri"])
                    if previous is None:
                        continue
                    changes[row["source_uri"]] = previous.claim_change
                    attempts[row["source_uri"]] = int(previous.attempts)
                    kept = (row["status"] == FileStatus.OUTPUT_MISSING
                            and previous.status in _IMPORTED
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
                # must not take it again (see tasks.inventory).
                conn.execute(
                    sa.update(inventory_table)
                    .where(inventory_table.c.datastore_id == self.datastore_id,
                           inventory_table.c.uri.in_(
                               [uri for uri in uris if uri in changes]),
                           inventory_table.c.done.is_(False))
                    .values(done=True, done_by=self.run_id)
                )
                if history:
                    stmt = _insert(conn)(outcomes_table)
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
        self, row: Mapping[str, Any], change: str | None, attempts: int, position: int,
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
        rows = jobs.reindex(columns=_RUN_JOB_COLUMNS).astype(object)
        rows = rows.where(rows.notna(), None).to_dict("records")
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

    def record_jobs_ended(self, outcomes: Sequence[JobOutcome]) -> None:
        """For jobs whose files are reported elsewhere (a FAILED job's files
        re-imported in the same retry)."""
        with self.engine.begin() as conn:
            self._record_jobs_ended(conn, outcomes)

    def _record_jobs_ended(self, conn: Connection, outcomes: Sequence[JobOutcome]) -> None:
        for outcome in outcomes:
            # An interrupted wait leaves the job as it was: SUBMITTED, unread.
            if outcome.job_id and outcome.status is not JobStatus.INTERRUPTED:
                conn.execute(
                    sa.update(jobs_table)
                    .where(jobs_table.c.datastore_id == self.datastore_id,
                           jobs_table.c.job_id == outcome.job_id)
                    .values(status=outcome.status.value, message=outcome.message,
                            output_s3_uri=outcome.output_s3_uri,
                            outcome_recorded=outcome.status is not JobStatus.TIMED_OUT)
                )

    def record_given_up(self, items: Sequence[LedgerFile], max_attempts: int) -> pd.DataFrame:
        """Mark retryable files past the attempt limit; returns their report rows."""
        now = _now()
        reasons = {
            item.uri: f"Gave up after {item.attempts} attempts (limit {max_attempts}); "
                      f"last outcome {item.status}: {item.reason or item.error_type}"
            for item in items
        }
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
            for chunk in _chunks(items, CLAIM_CHUNK):
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
                    _insert(conn)(outcomes_table).on_conflict_do_nothing(),
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


def _compare(row: Any, item: SourceFile) -> Change:
    if row.size is None:
        # Claimed by a run that died before submitting or reporting it.
        return Change.NEW
    if row.size == item.size and row.version == item.version:
        return Change.UNCHANGED
    return Change.CHANGED


def _ledger_file(row: Any) -> LedgerFile:
    return LedgerFile(
        uri=row.uri, source=row.source, relative_path=row.relative_path, size=row.size,
        version=row.version, sha256=row.sha256, sop_instance_uid=row.sop_instance_uid,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid, status=row.status,
        error_type=row.error_type, reason=row.reason, job_id=row.job_id,
        attempts=int(row.attempts or 0), batch_id=row.batch_id,
    )


@task(name="claim-files", cache_policy=NO_CACHE)
def claim_files(
    ledger: RunLedger, source: str, files: list[SourceFile], only_new: bool, max_attempts: int
) -> ClaimResult:
    return ledger.claim(source, files, only_new, max_attempts)


@task(name="skip-unchanged-content", cache_policy=NO_CACHE)
def settle_unchanged(
    ledger: RunLedger, records: list[ValidationRecord], only_new: bool
) -> tuple[list[ValidationRecord], int]:
    return ledger.settle_unchanged(records, only_new)
