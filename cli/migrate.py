"""``dicom-import migrate``: a whole source through many ingest runs on a work pool.

The options are generated from ``MigrateParameters`` (cli.options), as
``ingest``'s are from its model. The migration waits here while the ingest
deployment's workers do the work, so it needs the Prefect server those
workers poll: Prefect's temporary server has no workers.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from cli.exit_status import ExitStatus
from cli.options import add_model_options, add_verbose_option, parameters_or_complain
from flows.parameters import MigrateParameters

if TYPE_CHECKING:
    from flows.migrate import MigrateResult


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "migrate",
        help="Migrate a whole source: inventory it once, then run many ingest runs on a "
        "work pool until every file is accounted for.",
        description="Run the migrate flow: the source is inventoried in the ledger once, "
        "then --workers runs of the ingest deployment (--ingest-deployment) claim windows of "
        "it on their work pool, with at most --max-jobs-in-flight import jobs at once into "
        "the data store across all of them. Needs PREFECT_API_URL (the server the work "
        "pool's workers poll). Exit status: "
        f"{ExitStatus.OK} when every file is accounted for, {ExitStatus.FILES_FAILED} when "
        f"some failed or are unfinished, {ExitStatus.ERROR} when the migration itself could "
        f"not go on, {ExitStatus.INTERRUPTED} when stopped with Ctrl-C (the ingest runs go "
        "on).",
    )
    add_model_options(parser, MigrateParameters, positional=("source",),
                      needed=("datastore", "staging_prefix", "output_prefix"))
    add_verbose_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Imported as the command runs, not for --help (cli.main says why).
    from prefect.settings import PREFECT_API_URL

    from cli.run_console import run_flow_command
    from flows.migrate import UNFINISHED, dicom_migrate
    from tasks.report import FAILURES

    params = parameters_or_complain("migrate", args, MigrateParameters)
    if params is None:
        return ExitStatus.ERROR
    if not PREFECT_API_URL.value():
        print("dicom-import migrate: PREFECT_API_URL is not set: a migration runs the ingest "
              "deployment on a work pool, whose workers poll a Prefect server; export "
              "PREFECT_API_URL=http://<server>:4200/api.", file=sys.stderr)
        return ExitStatus.ERROR

    def tell(result: MigrateResult) -> ExitStatus:
        print_migration_story(result, params.source)
        failed = sum(result.counts.get(status, 0) for status in FAILURES)
        unfinished = result.counts.get(UNFINISHED, 0)
        return ExitStatus.FILES_FAILED if failed or unfinished or result.given_up \
            else ExitStatus.OK

    return run_flow_command("migrate", f"Migrating {params.source}", args.verbose,
                            lambda: dicom_migrate(params, return_state=True), tell)


def print_migration_story(result: MigrateResult, source: str) -> None:
    from cli.story import datastore_label
    from flows.migrate import UNFINISHED

    label = datastore_label(result.datastore_name, result.datastore_id)
    print(f"\nMigration of {source} into {label}: {result.files} files in inventory "
          f"{result.inventory_id}, {len(result.reports)} ingest runs")
    counts = {status: n for status, n in result.counts.items() if n}
    if result.skipped_unchanged:
        counts["skipped (unchanged)"] = result.skipped_unchanged
    if result.given_up:
        counts["skipped (given up)"] = result.given_up
    if counts:
        width = max(len(name) for name in counts)
        for name, count in counts.items():
            print(f"  {name:<{width}}  {count:>7}")
    if not result.reports and result.skipped_unchanged:
        print(f"Nothing new: {result.skipped_unchanged} files unchanged since earlier runs; "
              "no ingest run was started.")
    if result.counts.get(UNFINISHED):
        print("Some files are unfinished: run the same command again to finish them.")
    for run_id, folder in result.reports.items():
        print(f"  ingest run {run_id} ({result.child_states.get(run_id, '?')}): "
              f"report {folder or '(none)'}")
