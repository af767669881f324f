"""Running a flow from the shell: a stop on Ctrl-C that still ends with a
report, and the story of the run told on the console.

The first Ctrl-C asks the run to stop (tasks.interruption): no new import job
starts, jobs in flight are left running in HealthImaging and recorded, and the
report is written. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cli.exit_status import ExitStatus
from cli.prefect_api import start_temporary_server_if_needed
from cli.progress import ProgressDisplay
from tasks import interruption


@dataclass
class FlowRun:
    state: Any = None
    # The first Ctrl-C: the run stops waiting and still reports.
    interrupted: bool = False
    # A second Ctrl-C: stopped at once, without a result.
    abandoned: bool = False


@contextmanager
def running_flow(title: str, verbose: bool = False) -> Iterator[FlowRun]:
    ran = FlowRun()

    def on_interrupt(_signal: int, _frame: FrameType | None) -> None:
        if ran.interrupted:
            raise KeyboardInterrupt
        ran.interrupted = True
        interruption.request_stop()
        print("\nStopping: no new import job starts, jobs already started go on in "
              "HealthImaging; writing the report (Ctrl-C again to stop at once).",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        with ProgressDisplay(title, verbose):
            start_temporary_server_if_needed()
            yield ran
    except KeyboardInterrupt:
        ran.abandoned = True
        print("\nStopped at once. Jobs already started are in the ledger: run the same "
              "command again (or dicom-import retry) to pick them up.", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, previous)
        interruption.clear()


def run_flow_command(
    command: str, title: str, verbose: bool, start: Callable[[], Any],
    tell: Callable[[Any], ExitStatus],
) -> int:
    """Run a flow (``start`` returns its final state), then ``tell`` what its
    result means and which exit status it earns; a stop overrides that status."""
    with running_flow(title, verbose) as ran:
        ran.state = start()
    if ran.abandoned:
        return ExitStatus.INTERRUPTED
    if not ran.state.is_completed():
        print(f"dicom-import {command}: {describe(ran.state.result(raise_on_failure=False))}",
              file=sys.stderr)
        return ExitStatus.ERROR
    status = tell(ran.state.result())
    if ran.interrupted:
        print(f"dicom-import {command}: stopped. Jobs already started go on in HealthImaging "
              "and are in the ledger: run the same command again (or dicom-import retry) to "
              "pick them up.", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    return status


def describe(error: BaseException | Any) -> str:
    """One line an operator can act on."""
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        return (
            f"{error.operation_name} was refused: {details.get('Code')}: "
            f"{details.get('Message')}"
        )
    if isinstance(error, BotoCoreError):
        return f"AWS client error: {error}"
    if isinstance(error, BaseException):
        return f"{error}" if str(error) else type(error).__name__
    return str(error)
