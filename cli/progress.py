"""What the CLI shows while a flow runs: one line that follows the flow's
progress messages, instead of Prefect's console log; a message that must
not scroll away (a data store created, the flow run's ID) stays printed
above it.

Prefect's console handler prints every task's errors, retries and the
traceback of a failed flow, so one failure showed 4 to 7 times. Those lines go
to the Prefect API and its UI either way; the console shows the flow's own
progress, and the CLI tells the outcome once at the end (``--verbose`` gives
Prefect's lines back). The flow run's ID is shown in either case as soon as
the run begins: ``report``, ``retry`` and ``verify`` take it, and a run
stopped or killed half-way has no summary to show it in.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from prefect.logging.handlers import PrefectConsoleHandler
from rich.console import Console
from rich.status import Status

_FLOW_LOGGER = "prefect.flow_runs"
_TASK_LOGGER = "prefect.task_runs"


class ProgressDisplay(logging.Handler):
    def __init__(self, title: str, verbose: bool = False) -> None:
        super().__init__(level=logging.INFO)
        self.title = title
        self.verbose = verbose
        self.console = Console(stderr=True)
        self._status: Status | None = None
        self._started = time.monotonic()
        self._held: list[tuple[logging.Handler, int]] = []
        self.flow_run_id: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        run_id = getattr(record, "flow_run_id", None)
        if self.flow_run_id is None and record.name == _FLOW_LOGGER and run_id:
            self.flow_run_id = str(run_id)
            name = getattr(record, "flow_run_name", None)
            self._show(f"Flow run {run_id}" + (f" ({name})" if name else ""), notice=True)
            # Prefect's "Beginning flow run 'name' for flow ...": said just now.
            if message.startswith("Beginning "):
                return
        if self.verbose:
            return  # Prefect's own console handler shows the rest
        notice = getattr(record, "notice", False)
        progress = record.name == _FLOW_LOGGER and record.levelno == logging.INFO
        if not (notice or progress) or message.startswith("Finished in state"):
            return
        self._show(message, notice)

    def _show(self, message: str, notice: bool) -> None:
        elapsed = time.monotonic() - self._started
        line = f"[{elapsed:6.1f}s] {message}"
        if self._status is None:
            print(line, file=sys.stderr, flush=True)
        elif notice:
            # Logged with tasks.import_jobs.NOTICE: kept above the status line.
            self.console.print(line, markup=False, highlight=False)
        else:
            self._status.update(f"{self.title}: {line}")

    def __enter__(self) -> ProgressDisplay:
        for name in (_FLOW_LOGGER, _TASK_LOGGER):
            logging.getLogger(name).addHandler(self)
        if self.verbose:
            return self
        for handler in logging.getLogger().handlers:
            if isinstance(handler, PrefectConsoleHandler):
                self._held.append((handler, handler.level))
                handler.setLevel(logging.CRITICAL + 1)
        if self.console.is_terminal:
            self._status = self.console.status(self.title)
            self._status.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._status is not None:
            self._status.stop()
        for name in (_FLOW_LOGGER, _TASK_LOGGER):
            logging.getLogger(name).removeHandler(self)
        for handler, level in self._held:
            handler.setLevel(level)
