"""``dicom-import reconcile``: the reconcile flow from a shell, with options
generated from ``ReconcileParameters``. A dry run unless ``--apply``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from cli.exit_status import ExitStatus
from cli.options import add_model_options, add_verbose_option, parameters_or_complain
from cli.stop_wording import StopWording
from flows.parameters import ReconcileParameters
from tasks.statuses import DecisionOutcome

if TYPE_CHECKING:
    from flows.reconcile import ReconcileResult

STOP = StopWording(
    stopping="Stopping after the decision under way (it waits on HealthImaging's writes); "
    "the rest are not started (Ctrl-C again to stop at once).",
    stopped="stopped before every decision was carried out: give the ones listed as not "
    "started a decisions file of their own (the ones carried out would now be refused: "
    "their image sets are deleted).",
    at_once="Stopped at once: every change made is in the ledger, with the versions before "
    "and after.",
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reconcile",
        help="Promote or merge non-primary image sets, as a decisions file says.",
        description="Carry out an operator's decision for each non-primary image set named "
        "in DECISIONS: promote it to a primary image set, or correct its attributes and "
        "merge it into the primary image set of its series; either way the non-primary set "
        "is deleted once copied. Without --apply, prints what it would do and changes "
        "nothing. Every change is recorded in the ledger with the versions before and after. "
        f"Exit status: {ExitStatus.OK} when every decision could be (or was) carried out, "
        f"{ExitStatus.FILES_FAILED} when some could not (one line each), "
        f"{ExitStatus.ERROR} when the run could not go on.",
    )
    add_model_options(parser, ReconcileParameters, positional=("decisions",),
                      needed=("datastore",))
    add_verbose_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    params = parameters_or_complain("reconcile", args, ReconcileParameters)
    if params is None:
        return ExitStatus.ERROR
    # Imported as the command runs, not for --help (cli.main says why).
    from cli.run_console import run_flow_command
    from flows.reconcile import dicom_reconcile

    title = "Reconciling" if params.apply else "Checking decisions"
    return run_flow_command("reconcile", f"{title} in {params.datastore}", args.verbose,
                            lambda: dicom_reconcile(params, return_state=True), tell, STOP)


def tell(result: ReconcileResult) -> ExitStatus:
    """One line per decision: what it would do or did on stdout, failures on stderr."""
    for decision in result.decisions:
        what = f"image set {decision.image_set_id}: {decision.action.value}"
        if decision.outcome is DecisionOutcome.FAILED:
            print(f"dicom-import reconcile: {what} failed: {decision.detail}", file=sys.stderr)
        elif decision.outcome is DecisionOutcome.PLANNED:
            print(f"{what} would: {decision.detail}")
        elif decision.outcome is DecisionOutcome.NOT_STARTED:
            print(f"{what}: {decision.detail}")
        else:
            print(f"image set {decision.image_set_id}: {decision.detail}")
    if not result.applied:
        print("Dry run: nothing changed. Run again with --apply to carry these out.")
    not_started = any(d.outcome is DecisionOutcome.NOT_STARTED for d in result.decisions)
    return ExitStatus.FILES_FAILED if result.failed() or not_started else ExitStatus.OK
