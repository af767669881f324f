"""Running a flow from the shell: a stop on Ctrl-C that still ends with a
report, and the story of the run told on the console.

The first Ctrl-C asks the run to stop (tasks.interruption): no new import job
starts, jobs in flight are left running in HealthImaging and recorded, and the
report is written. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import atexit
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prefect.logging.handlers import PrefectConsoleHandler

from cli.exit_status import ExitStatus
from cli.prefect_api import start_temporary_server_if_needed
from cli.progress import ProgressDisplay
from cli.stop_wording import IMPORT_STOP, StopWording
from tasks import interruption


@dataclass
class FlowRun:
    state: Any = None
    # The first Ctrl-C: the run stops waiting and still reports.
    interrupted: bool = False
    # A second Ctrl-C: stopped at once, without a result.
    abandoned: bool = False


@contextmanager
def running_flow(
    title: str, verbose: bool = False, wording: StopWording = IMPORT_STOP
) -> Iterator[FlowRun]:
    ran = FlowRun()

    def on_interrupt(_signal: int, _frame: FrameType | None) -> None:
        if ran.interrupted:
            raise KeyboardInterrupt
        ran.interrupted = True
        interruption.request_stop()
        print(f"\n{wording.stopping}", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        with ProgressDisplay(title, verbose):
            start_temporary_server_if_needed()
            # Registered (once) after the temporary server's own stop, so run before it.
            for hook in (_ignore_interrupts, _quiet_prefect_console):
                atexit.unregister(hook)
            atexit.register(_ignore_interrupts)
            if not verbose:
                atexit.register(_quiet_prefect_console)
            yield ran
    except KeyboardInterrupt:
        ran.abandoned = True
        print(f"\n{wording.at_once}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, previous)
        interruption.clear()


def _ignore_interrupts() -> None:
    """At exit the command has ended and Prefect stops its temporary server
    (a few seconds at most): a Ctrl-C then would only print a traceback from
    inside that stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _quiet_prefect_console() -> None:
    """Prefect says "Stopping temporary server on ..." as the command exits,
    after the story is told: one of its own lines, which the console shows
    only with --verbose. Its warnings still show."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.setLevel(max(handler.level, logging.WARNING))


def run_flow_command(
    command: str, title: str, verbose: bool, start: Callable[[], Any],
    tell: Callable[[Any], ExitStatus], wording: StopWording = IMPORT_STOP,
) -> int:
    """Run a flow (``start`` returns its final state), then ``tell`` what its
    result means and which exit status it earns; a stop overrides that status."""
    with running_flow(title, verbose, wording) as ran:
        ran.state = start()
    if ran.abandoned:
        return ExitStatus.INTERRUPTED
    if not ran.state.is_completed():
        print(f"dicom-import {command}: {describe(ran.state.result(raise_on_failure=False))}",
              file=sys.stderr)
        return ExitStatus.ERROR
    status = tell(ran.state.result())
    if ran.interrupted:
        print(f"dicom-import {command}: {wording.stopped}", file=sys.stderr)
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
