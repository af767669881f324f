"""What the CLI shows while a flow runs: one line that follows the flow's
progress messages, instead of Prefect's console log; a message that must
not scroll away (a data store created) stays printed above it.

Prefect's console handler also prints the traceback of a failed flow; the
CLI turns failures into a one-line error instead, so that handler is held
back for the duration of the run (the messages still reach the Prefect API
and its UI).
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from prefect.logging.handlers import PrefectConsoleHandler
from rich.console import Console
from rich.status import Status

_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class ProgressDisplay(logging.Handler):
    def __init__(self, title: str) -> None:
        super().__init__(level=logging.INFO)
        self.title = title
        self.console = Console(stderr=True)
        self._status: Status | None = None
        self._started = time.monotonic()
        self._held: list[tuple[logging.Handler, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Finished in state Completed" in message:
            return
        elapsed = time.monotonic() - self._started
        line = f"[{elapsed:6.1f}s] {message}"
        if self._status is None:
            print(line, file=sys.stderr, flush=True)
        elif getattr(record, "notice", False):
            # Logged with tasks.import_jobs.NOTICE: kept above the status line.
            self.console.print(line, markup=False, highlight=False)
        else:
            self._status.update(f"{self.title}: {line}")

    def __enter__(self) -> ProgressDisplay:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, PrefectConsoleHandler):
                self._held.append((handler, handler.level))
                handler.setLevel(logging.CRITICAL + 1)
        for name in _RUN_LOGGERS:
            logging.getLogger(name).addHandler(self)
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
        for name in _RUN_LOGGERS:
            logging.getLogger(name).removeHandler(self)
        for handler, level in self._held:
            handler.setLevel(level)
