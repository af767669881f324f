"""``dicom-import retry``: the retry_failed flow from a shell.

Imports again what earlier runs left failed or unfinished (jobs nobody read,
FAILED jobs, server errors, and with ``--force`` files refused for their
content), with options generated from ``RetryParameters`` as ``ingest``'s
are from its model.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from cli.exit_status import ExitStatus
from cli.options import add_model_options, add_verbose_option, parameters_or_complain
from flows.parameters import RetryParameters

if TYPE_CHECKING:
    from flows.retry import RetryResult


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "retry",
        help="Import again what earlier runs left failed or unfinished.",
        description="Run the retry flow once: resume import jobs that earlier runs started "
        "but never read, then import again the files whose failure may pass (a FAILED job, "
        "a server error), within --max-attempts. Files refused for their content are taken "
        "again once they changed, or with --force. Files a verification failed are imported "
        "again only where that replaces their instance; what is imported is verified "
        "(--verify). Exit status as for ingest.",
    )
    add_model_options(parser, RetryParameters,
                      needed=("datastore", "staging_prefix", "output_prefix"))
    add_verbose_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Imported as the command runs, not for --help (cli.main says why).
    from cli.run_ids import with_full_run_id

    params = parameters_or_complain("retry", args, RetryParameters)
    if params is not None:
        params = with_full_run_id("retry", params, "run_id")
    if params is None:
        return ExitStatus.ERROR
    from cli.run_console import run_flow_command
    from flows.retry import retry_failed
    from tasks.report import FAILURES

    def tell(result: RetryResult) -> ExitStatus:
        print_retry_story(result, params)
        failed = sum(result.counts.get(status, 0) for status in FAILURES)
        return ExitStatus.FILES_FAILED if failed else ExitStatus.OK

    return run_flow_command("retry", f"Retrying failures in {params.datastore}", args.verbose,
                            lambda: retry_failed(params, return_state=True), tell)


def print_retry_story(result: RetryResult, params: RetryParameters) -> None:
    from cli.story import (
        datastore_label,
        print_failures,
        print_jobs,
        print_report_paths,
        read_table,
    )

    label = datastore_label(result.datastore_name, result.datastore_id)
    print(f"\nData store {label}: {result.resumed_jobs} unread jobs resumed, "
          f"{result.retried_files} files retried in {result.jobs} new import jobs")
    counts = {status: count for status, count in result.counts.items() if count}
    if result.not_retried_unchanged:
        counts["not retried (unchanged)"] = result.not_retried_unchanged
    if not counts:
        print("Nothing to retry.")
        return
    width = max(len(name) for name in counts)
    for name, count in counts.items():
        print(f"  {name:<{width}}  {count:>7}")
    checked = {name: count for name, count in result.verification.items() if count}
    if checked:
        print("Verified: " + ", ".join(f"{name} {count}" for name, count in checked.items()))
    print_failures(result.report_files_parquet, params.source or "")
    if result.needs_decision:
        print(f"\n{result.needs_decision} files are not in the data store as their source has "
              "them, and importing them again would not change that: their error_message "
              "says where they are; decide with dicom-import reconcile (see README.md, "
              "\"Non-primary image sets\").")
    print_jobs(read_table(result.report_jobs_parquet),
               result.report_jobs_csv or result.report_jobs_parquet)
    print_report_paths(result.report_files_csv, result.report_files_parquet,
                       result.report_jobs_csv or result.report_jobs_parquet)
