"""The ingestion ledger: every source object seen, and what last happened to it.

Reports are per run; a scheduled ingestion needs memory across runs (which
files were already imported, unchanged), two runs started together need one
place that decides which of them takes a file, and a retry needs the jobs that
a killed run started but never read. That is this package, one module per job:

- ``schema``: the tables, the engine per URL (SQLite beside the reports by
  default, PostgreSQL for a shared deployment), and the migrations that bring
  any ledger to the current schema;
- ``location``: where the ledger is, and whether one is there yet;
- ``runs``: runs, heartbeats and liveness (who is presumed dead);
- ``claims``: which run takes which file;
- ``jobs``: import jobs started, how they ended, which wait for outcomes;
- ``outcomes``: each file's latest outcome and each run's report rows;
- ``inventory``: a source listed once, handed out to runs in windows;
- ``instances``: SOP instances the data store holds with a file's bytes,
  imported from another file (skipped as unchanged);
- ``verification``: the imported files verification checks, and what it found.

:class:`RunLedger` (``handle``) is the one handle a run holds: it is made of
those parts. Import from here; the modules are the package's own layout.
"""

from tasks.ledger.claims import settle_unchanged
from tasks.ledger.files import IMPORTED, LedgerFile
from tasks.ledger.handle import RunLedger
from tasks.ledger.instances import skip_imported_elsewhere
from tasks.ledger.inventory import (
    Inventory,
    Leftover,
    Listing,
    Window,
    claim_window,
    list_source,
)
from tasks.ledger.jobs import LedgerJob
from tasks.ledger.location import (
    LEDGER_FILE_NAME,
    LEDGER_SETTING,
    REPORT_OPTION,
    ledger_exists,
    ledger_url,
    require_existing,
)
from tasks.ledger.outcomes import RecordedRun, recorded_run
from tasks.ledger.part import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_PRESUMED_DEAD_SECONDS,
    Clock,
    SystemClock,
)
from tasks.ledger.runs import Holder, LedgerRun, run_id_from_prefix
from tasks.ledger.schema import (
    LedgerError,
    dispose_engine,
    engine_for,
    files_table,
    jobs_table,
    outcomes_table,
    run_jobs_table,
    runs_table,
    sqlite_path,
)
from tasks.ledger.verification import (
    LANDED,
    ImportedFiles,
    imported_files,
    record_verification,
    select_imported,
)

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_PRESUMED_DEAD_SECONDS",
    "IMPORTED",
    "LANDED",
    "LEDGER_FILE_NAME",
    "LEDGER_SETTING",
    "REPORT_OPTION",
    "Clock",
    "Holder",
    "ImportedFiles",
    "Inventory",
    "LedgerError",
    "LedgerFile",
    "LedgerJob",
    "LedgerRun",
    "Leftover",
    "Listing",
    "RecordedRun",
    "RunLedger",
    "SystemClock",
    "Window",
    "claim_window",
    "dispose_engine",
    "engine_for",
    "files_table",
    "imported_files",
    "jobs_table",
    "ledger_exists",
    "ledger_url",
    "list_source",
    "outcomes_table",
    "record_verification",
    "recorded_run",
    "require_existing",
    "run_id_from_prefix",
    "run_jobs_table",
    "runs_table",
    "select_imported",
    "settle_unchanged",
    "skip_imported_elsewhere",
    "sqlite_path",
]
