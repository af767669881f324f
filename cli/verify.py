"""``dicom-import verify``: the dicom-verify flow from a shell.

Over a past run (``--run``), an import job (``--job``), or everything the
ledger says was imported from a source into a data store (``--datastore``
with ``--source``, which also writes a signed-off verification record).
Options are generated from ``VerifyParameters``. Exit status 0 when every
file verified, 1 otherwise (a mismatch, a missing instance, a file that could
not be checked), 2 when the verification itself could not run.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from cli.exit_status import ExitStatus
from cli.options import add_model_options, add_verbose_option, parameters_or_complain
from cli.stop_wording import StopWording
from flows.parameters import VerifyParameters
from tasks.statuses import Verification

if TYPE_CHECKING:
    from flows.verify import VerifyResult

STOP = StopWording(
    stopping="Stopping: no more source files are read; the rest are reported as not "
    "checked (Ctrl-C again to stop at once).",
    stopped="stopped before every file was checked: run the same command again to check "
    "them all.",
    at_once="Stopped at once, with no report: run the same command again.",
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="Check that imported files are in the data store as their source has them.",
        description="Run the verify flow once: for each file a run, a job or a source "
        "imported, the instance must be in the image set the import named, under its study "
        "and series, with the source's patient, study and series attributes and number of "
        "frames (and with --mode pixels, every frame's CRC-32). Writes a verification report; "
        "with --datastore and --source, also a signed-off verification record. Exit status "
        f"{ExitStatus.OK} when every file verified, {ExitStatus.FILES_FAILED} otherwise, "
        f"{ExitStatus.ERROR} when the verification could not run.",
    )
    add_model_options(parser, VerifyParameters)
    add_verbose_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Imported as the command runs, not for --help (cli.main says why).
    from cli.run_ids import with_full_run_id

    params = parameters_or_complain("verify", args, VerifyParameters)
    if params is not None:
        params = with_full_run_id("verify", params, "run")
    if params is None:
        return ExitStatus.ERROR
    from cli.run_console import run_flow_command
    from flows.verify import dicom_verify

    def tell(result: VerifyResult) -> ExitStatus:
        print_verify_story(result)
        unverified = result.files - result.counts.get(Verification.VERIFIED.value, 0)
        return ExitStatus.FILES_FAILED if unverified else ExitStatus.OK

    return run_flow_command("verify", "Verifying imported files", args.verbose,
                            lambda: dicom_verify(params, return_state=True), tell, STOP)


def print_verify_story(result: VerifyResult) -> None:
    if not result.files:
        print("\nNothing to verify: the ledger lists no imported file for this selection.")
        return
    print(f"\nData store {result.datastore_id}: {result.files} imported files checked")
    for name, count in result.counts.items():
        if count:
            print(f"  {name:<11}  {count:>7}")
    print(f"\nVerification report: {result.report_csv}")
    print(f"                     {result.report_parquet}")
    if result.record_markdown:
        print(f"Verification record: {result.record_json}")
        print(f"                     {result.record_markdown}")
