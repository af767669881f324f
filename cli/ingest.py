"""``dicom-import ingest``: run the ingest flow once from a shell.

The options are generated from ``IngestParameters`` (cli.options); an option
left out falls back to the settings (env or ``dicom-import.toml``). Failures
end as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from cli.exit_status import ExitStatus
from cli.options import add_model_options, add_verbose_option, parameters_or_complain
from flows.parameters import IngestParameters

if TYPE_CHECKING:
    from flows.ingest import IngestResult

# Required to import, not in a dry run.
_NEEDED_TO_IMPORT = ("datastore", "staging_prefix", "output_prefix")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="Validate, stage and import DICOM files once, and report on every file.",
        description="Run the ingest flow once and print its summary. Options left out "
        "come from the settings (DICOM_IMPORT_* or dicom-import.toml). Exit status: "
        f"{ExitStatus.OK} when every file is accounted for, {ExitStatus.FILES_FAILED} when "
        f"some failed in the import, {ExitStatus.ERROR} when the run itself could not go on, "
        f"{ExitStatus.HELD_ELSEWHERE} when another live run holds some of the files, "
        f"{ExitStatus.INTERRUPTED} when stopped with Ctrl-C.",
    )
    add_model_options(parser, IngestParameters, positional=("source",),
                      needed=_NEEDED_TO_IMPORT)
    add_verbose_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    params = parameters_or_complain("ingest", args, IngestParameters)
    if params is None:
        return ExitStatus.ERROR
    return run_ingest(params, args.verbose)


def run_ingest(params: IngestParameters, verbose: bool = False) -> int:
    """Run the flow with a progress line, then tell what happened."""
    # Imported as the command runs, not for --help (cli.main says why).
    from cli.run_console import run_flow_command
    from cli.story import print_ingest_story
    from flows.ingest import dicom_ingest
    from tasks.report import FAILURES

    def tell(result: IngestResult) -> ExitStatus:
        print_ingest_story(result, params)
        for holder in result.holders:
            print(f"dicom-import ingest: {holder}; run the same command again once it ends.",
                  file=sys.stderr)
        if result.claimed_by_other_runs:
            return ExitStatus.HELD_ELSEWHERE
        failed = sum(result.counts.get(status, 0) for status in FAILURES) + result.given_up
        return ExitStatus.FILES_FAILED if failed else ExitStatus.OK

    return run_flow_command("ingest", f"Ingesting {params.source}", verbose,
                            lambda: dicom_ingest(params, return_state=True), tell)
