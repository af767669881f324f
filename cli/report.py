"""``dicom-import report``: write a run's report again, from the ledger alone.

A run killed while writing its report, a report folder deleted or expired:
the ledger recorded every row of the report before it was written, so any
run's report can be written again. The ledger is found as ``ingest`` finds
it (``DICOM_IMPORT_LEDGER_URL``, else beside the report location). Failures
end as one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from config.settings import default_report_location, get_settings

EXIT_ERROR = 2


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="Write a run's report again from the ingestion ledger.",
        description="Rebuild the files and jobs reports of an ingestion or retry run from "
        "the ledger, into the run's own report folder or --output. The rebuilt report has "
        "no patient columns: they are never in the ledger.",
    )
    parser.add_argument("--run", dest="run_id", required=True,
                        help="The run's flow run ID, as the command printed it (or the Prefect "
                        "UI shows it), or any unique start of it, such as the 8 characters "
                        "that end its report folder's name.")
    parser.add_argument("--report-location", default=None,
                        help="The report location the run used, where its SQLite ledger is "
                        f"(default: {_default_report_location()}); ignored when "
                        "DICOM_IMPORT_LEDGER_URL is set.")
    parser.add_argument("--output", default=None,
                        help="Folder or s3:// prefix to write to (default: the folder the "
                        "run wrote its report to).")
    parser.set_defaults(handler=run)


def _default_report_location() -> str:
    """As the settings have it here; an unreadable settings file is reported
    when the command runs, not by --help."""
    try:
        return get_settings().report_location
    except Exception:
        return f"DICOM_IMPORT_REPORT_LOCATION, else {default_report_location()}"


def run(args: argparse.Namespace) -> int:
    # Imported as the command runs, not for --help (cli.main says why).
    import sqlalchemy as sa

    from tasks.ledger import (
        LedgerError,
        ledger_url,
        recorded_run,
        require_existing,
        run_id_from_prefix,
    )
    from tasks.report import rebuilt_report, write_report

    settings = get_settings()
    try:
        url = ledger_url(settings.ledger_url,
                         args.report_location or settings.report_location)
        require_existing(url)
        recorded = recorded_run(url, run_id_from_prefix(url, args.run_id))
        folder = args.output or recorded.report_folder
        if not folder:
            raise LedgerError(f"The ledger does not say where run {recorded.run_id} wrote its "
                              "report (a run from an earlier version): give --output.")
        files, jobs = rebuilt_report(recorded.files, recorded.jobs)
        paths = write_report(files, jobs, folder)
    except (LedgerError, sa.exc.SQLAlchemyError, OSError) as error:
        print(f"dicom-import report: {_first_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    print(f"Report of run {recorded.run_id} ({recorded.flow}, data store "
          f"{recorded.datastore_id}) rebuilt from the ledger: {len(files)} files, "
          f"{len(jobs)} jobs")
    print(f"Per-file report: {paths.files_csv}")
    print(f"                 {paths.files_parquet}")
    print(f"Per-job report:  {paths.jobs_csv}")
    print(f"                 {paths.jobs_parquet}")
    return 0


def _first_line(error: BaseException) -> str:
    """SQLAlchemy errors carry the statement on following lines."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__
