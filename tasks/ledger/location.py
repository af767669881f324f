"""Where the ledger is, and whether one is there yet.

SQLite under the report location unless ``DICOM_IMPORT_LEDGER_URL`` names
another database. Only the commands that start from a source (ingest,
migrate) may begin a ledger; the others (report, verify, retry, reconcile)
work on what earlier runs recorded, and an empty ledger of their own would
only hide those runs: they ask :func:`require_existing` first.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from tasks.ledger.schema import LedgerError, files_table, new_engine, sqlite_path
from tasks.locations import is_s3

LEDGER_FILE_NAME = "ledger.sqlite"
REPORT_OPTION = "--report-location"
LEDGER_SETTING = "DICOM_IMPORT_LEDGER_URL"


def ledger_url(configured: str | None, report_location: str) -> str:
    """The configured URL, else SQLite in the report location. Creates nothing.

    Raises:
        LedgerError: the reports go to S3, where SQLite cannot live.
    """
    if configured:
        return configured
    if is_s3(report_location):
        raise LedgerError(
            f"The report location {report_location} is on S3, where the SQLite ledger cannot "
            f"live: set {LEDGER_SETTING} to a SQLite path (sqlite:////var/lib/dicom-import/"
            "ledger.sqlite) or a PostgreSQL URL."
        )
    folder = Path(report_location).expanduser().resolve()
    return f"sqlite:///{folder / LEDGER_FILE_NAME}"


def ledger_exists(url: str) -> bool:
    """Whether a ledger is there, asked without beginning one: a SQLite file
    is looked for, another database asked for the ledger's tables.

    Raises:
        LedgerError: the URL is not one a ledger can have, or its database
            does not answer.
    """
    try:
        path = sqlite_path(url)
    except sa.exc.ArgumentError as error:
        raise LedgerError(f"{LEDGER_SETTING} is not a database URL: {error}.") from error
    if path is not None:
        return path.exists()
    engine = None
    try:
        engine = new_engine(url)
        return sa.inspect(engine).has_table(files_table.name)
    except (sa.exc.SQLAlchemyError, ImportError) as error:
        reason = str(getattr(error, "orig", None) or error).splitlines()[0]
        raise LedgerError(
            f"{LEDGER_SETTING} {_shown(url)}: cannot open the ledger: {reason}."
        ) from error
    finally:
        if engine is not None:
            engine.dispose()


def _shown(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def require_existing(url: str) -> None:
    """Opening a ledger that is not there would begin a new, empty one.

    Raises:
        LedgerError: no ledger there (the message says where it looked and
            what to give instead), or none can be there.
    """
    if ledger_exists(url):
        return
    path = sqlite_path(url)
    if path is not None:
        raise LedgerError(f"There is no ledger at {path}: give the report location the runs "
                          f"used ({REPORT_OPTION}), or set {LEDGER_SETTING}.")
    raise LedgerError(f"There is no ledger in {_shown(url)}: set {LEDGER_SETTING} to the database "
                      "the runs used.")
